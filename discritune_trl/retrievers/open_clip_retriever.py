"""`OpenCLIPRetriever`: any open_clip model as DiscriTune's frozen retriever (the paper uses ViT-B-32/openai)."""

from __future__ import annotations

from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image

from ..utils.images import to_rgb
from ..utils.open_clip_utils import build_open_clip
from .base import Retriever, check_pixel_values


# Pooling types for which padding after the pooled token cannot change the result under a causal mask.
_TRIMMABLE_POOL_TYPES = ("argmax", "eos", "first")


class OpenCLIPRetriever(Retriever):
    """A frozen open_clip dual encoder.

    Three ways to build one:

    - `OpenCLIPRetriever("ViT-B-32", pretrained="openai")`: architecture name and pretrained tag (the paper's
      retriever); needs the weights in open_clip's cache or a connection.
    - `OpenCLIPRetriever("ViT-B-32", checkpoint_path="clip.pt")` or
      `OpenCLIPRetriever(None, model_cfg={...}, checkpoint_path=...)`: a local open_clip checkpoint; with
      `model_cfg` alone the weights are random (tests, the embedded world).
    - `OpenCLIPRetriever.from_model(model, preprocess, tokenizer)`: an open_clip model you already built.

    Captions are truncated at the tokenizer's context length (77 for CLIP) and the padded token batch is trimmed to
    its longest caption before the text transformer runs. CLIP's causal text transformer pools at the EOT token, so
    trimming gives the same embeddings as the full 77-token batch, faster. Models whose text tower is not the
    standard causal `open_clip.CLIP` one are run on the untrimmed batch.

    Args:
        model_name (`str`, *optional*): open_clip architecture name, e.g. `"ViT-B-32"`.
        pretrained (`str`, *optional*): open_clip pretrained tag, e.g. `"openai"`.
        model_cfg (`dict`, *optional*): open_clip architecture config (`embed_dim`, `vision_cfg`, `text_cfg`),
            instead of a registry name.
        checkpoint_path (`str`, *optional*): local open_clip checkpoint to load into the architecture.
        cache_dir (`str`, *optional*): open_clip's download cache.
    """

    def __init__(
        self,
        model_name: str | None = None,
        pretrained: str | None = None,
        *,
        model_cfg: dict[str, Any] | None = None,
        checkpoint_path: str | None = None,
        cache_dir: str | None = None,
    ):
        super().__init__()
        if pretrained is None and checkpoint_path is None and model_cfg is None:
            raise ValueError(
                f"OpenCLIPRetriever({model_name!r}) has no weights: pass pretrained=<tag> (the paper uses "
                "OpenCLIPRetriever('ViT-B-32', pretrained='openai')), checkpoint_path=<file>, or model_cfg=<dict> "
                "for a randomly initialised model."
            )
        model, preprocess, tokenizer = build_open_clip(
            model_name, pretrained, model_cfg=model_cfg, checkpoint_path=checkpoint_path, cache_dir=cache_dir
        )
        self._setup(model, preprocess, tokenizer)
        # Recorded for model cards and logs (what judged the captions).
        self.model_name = model_name
        self.pretrained = pretrained or checkpoint_path

    @classmethod
    def from_model(cls, model: torch.nn.Module, preprocess: Any, tokenizer: Any) -> OpenCLIPRetriever:
        """Wrap an already-built open_clip model, its image transform and its tokenizer.

        The model is frozen in place (its parameters stop requiring grad).
        """
        retriever = cls.__new__(cls)
        Retriever.__init__(retriever)
        retriever._setup(model, preprocess, tokenizer)
        return retriever

    def _setup(self, model: torch.nn.Module, preprocess: Any, tokenizer: Any) -> None:
        if not hasattr(model, "encode_image") or not hasattr(model, "encode_text"):
            raise TypeError(
                f"{type(model).__name__} is not an open_clip model (no encode_image/encode_text); build one with "
                "open_clip.create_model_and_transforms or discritune_trl.utils.open_clip_utils.build_open_clip."
            )
        self.model = model
        self.image_transform = preprocess
        self.tokenizer = tokenizer
        self.embed_dim = getattr(getattr(model, "visual", None), "output_dim", None)
        self.freeze()

    @property
    def context_length(self) -> int:
        """Number of token positions the text tower reads (captions are truncated to it)."""
        return int(getattr(self.tokenizer, "context_length", None) or self.model.context_length)

    @property
    def can_trim_text(self) -> bool:
        """Whether the padded token batch may be cut to its longest caption without changing the embeddings."""
        model = self.model
        return (
            isinstance(model, open_clip.CLIP)
            and model.attn_mask is not None  # causal: tokens never attend to the padding after them
            and model.text_pool_type in _TRIMMABLE_POOL_TYPES
            and isinstance(self.tokenizer, open_clip.SimpleTokenizer)  # pads with id 0
        )

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images to `[N, 3, H, W]` pixels with the model's own eval transform."""
        return torch.stack([self.image_transform(image) for image in to_rgb(images)])

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` pixels to `[N, D]` L2-normalised embeddings."""
        check_pixel_values(pixel_values, getattr(self.model.visual, "image_size", None), type(self).__name__)
        pixel_values = pixel_values.to(device=self.device, dtype=self.dtype)
        return self.model.encode_image(pixel_values, normalize=True)

    def tokenize(self, texts: list[str], trim: bool = True) -> torch.LongTensor:
        """Captions to `[B, L]` token ids, truncated at the context length and, with `trim`, cut to the longest."""
        tokens = self.tokenizer(list(texts), context_length=self.context_length)  # [B, context_length]
        if trim and self.can_trim_text:
            is_token = tokens != 0  # [B, L]; id 0 also spells "!", but a caption always ends on EOT
            positions = torch.arange(1, tokens.shape[1] + 1)
            longest = int((is_token * positions).max())
            tokens = tokens[:, :longest]
        return tokens

    def encode_texts(self, texts: list[str], trim: bool = True) -> torch.Tensor:
        """`B` captions to `[B, D]` L2-normalised embeddings.

        Args:
            texts: the captions; longer ones are truncated at the context length (77 tokens for CLIP).
            trim: run the text transformer on the batch cut to its longest caption (same result, faster).
        """
        tokens = self.tokenize(texts, trim=trim).to(self.device)
        if tokens.shape[1] == self.model.context_length or not self.can_trim_text:
            return self.model.encode_text(tokens, normalize=True)
        return _encode_trimmed_text(self.model, tokens)

    @property
    def logit_scale(self) -> torch.Tensor:
        """`exp` of the model's learned log-temperature (100 for OpenAI CLIP)."""
        return self.model.logit_scale.detach().exp()


def _encode_trimmed_text(model: open_clip.CLIP, tokens: torch.LongTensor) -> torch.Tensor:
    """`open_clip.CLIP.encode_text` for a batch shorter than the context: slice positions and causal mask to it."""
    length = tokens.shape[1]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)  # [B, L, W]
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = open_clip.transformer.text_global_pool(x, tokens, model.text_pool_type, eos_token_id=model.text_eos_id)
    if isinstance(model.text_projection, torch.nn.Linear):
        x = model.text_projection(x)
    elif model.text_projection is not None:
        x = x @ model.text_projection  # [B, D]
    return F.normalize(x, dim=-1)
