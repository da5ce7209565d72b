"""`TransformersCLIPRetriever`: a transformers `CLIPModel` or `SiglipModel` as DiscriTune's frozen retriever."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, PreTrainedModel

from ..utils.images import to_rgb
from .base import Retriever, check_pixel_values


def _pooled(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose `pooler_output` holds the projected features; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersCLIPRetriever(Retriever):
    """A frozen transformers dual encoder: `CLIPModel` (e.g. `openai/clip-vit-base-patch32`) or `SiglipModel`.

    Captions are truncated at the text tower's `max_position_embeddings` (77 for CLIP). CLIP batches are padded to
    the longest caption (its causal text tower pools at EOS, so this equals padding to 77); SigLIP batches are
    padded to the full length, as SigLIP was trained (it pools the last position).

    Args:
        model (`PreTrainedModel`): a `CLIPModel`, `SiglipModel` or any model with `get_text_features`,
            `get_image_features` and a `logit_scale` parameter (stored as a log).
        processor (*optional*): a processor holding `.tokenizer` and `.image_processor` (e.g. `CLIPProcessor`).
        tokenizer (*optional*): the text tokenizer, instead of `processor`.
        image_processor (*optional*): the image processor, instead of `processor`.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: Any = None,
        *,
        tokenizer: Any = None,
        image_processor: Any = None,
    ):
        super().__init__()
        tokenizer = tokenizer if tokenizer is not None else getattr(processor, "tokenizer", None)
        image_processor = (
            image_processor if image_processor is not None else getattr(processor, "image_processor", None)
        )
        if tokenizer is None or image_processor is None:
            raise ValueError(
                "TransformersCLIPRetriever needs a tokenizer and an image processor: pass processor=<CLIPProcessor> "
                "or tokenizer=... and image_processor=..."
            )
        for method in ("get_text_features", "get_image_features"):
            if not hasattr(model, method):
                raise TypeError(f"{type(model).__name__} has no {method}; pass a CLIPModel or SiglipModel.")
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.embed_dim = getattr(model.config, "projection_dim", None) or getattr(
            model.config.text_config, "hidden_size", None
        )
        self.freeze()

    @classmethod
    def from_pretrained(cls, name_or_path: str, **model_kwargs: Any) -> TransformersCLIPRetriever:
        """Load model, tokenizer and image processor from a Hub id or a local `save_pretrained` folder."""
        model = AutoModel.from_pretrained(name_or_path, **model_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = AutoImageProcessor.from_pretrained(name_or_path)
        return cls(model, tokenizer=tokenizer, image_processor=image_processor)

    @property
    def context_length(self) -> int:
        """Number of token positions the text tower reads (captions are truncated to it)."""
        return int(self.model.config.text_config.max_position_embeddings)

    @property
    def pads_to_max_length(self) -> bool:
        """SigLIP pools the last position, so its batches must be padded to the full context."""
        return self.model.config.model_type.startswith("siglip")

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images to `[N, 3, H, W]` pixels with the model's image processor."""
        return self.image_processor(images=to_rgb(images), return_tensors="pt")["pixel_values"]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[N, 3, H, W]` pixels to `[N, D]` L2-normalised embeddings."""
        vision_config = getattr(self.model.config, "vision_config", None)
        check_pixel_values(pixel_values, getattr(vision_config, "image_size", None), type(self).__name__)
        features = _pooled(
            self.model.get_image_features(pixel_values=pixel_values.to(device=self.device, dtype=self.dtype))
        )
        return F.normalize(features, dim=-1)

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """Captions to the model's text inputs, truncated at the context length."""
        padding = "max_length" if self.pads_to_max_length else "longest"
        encoded = self.tokenizer(
            list(texts), padding=padding, truncation=True, max_length=self.context_length, return_tensors="pt"
        )
        inputs = {"input_ids": encoded["input_ids"]}
        if not self.pads_to_max_length and "attention_mask" in encoded:
            inputs["attention_mask"] = encoded["attention_mask"]
        return inputs

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """`B` captions to `[B, D]` L2-normalised embeddings."""
        inputs = {name: tensor.to(self.device) for name, tensor in self.tokenize(texts).items()}
        return F.normalize(_pooled(self.model.get_text_features(**inputs)), dim=-1)

    @property
    def logit_scale(self) -> torch.Tensor:
        """`exp` of the model's learned log-temperature."""
        return self.model.logit_scale.detach().exp().reshape(())
