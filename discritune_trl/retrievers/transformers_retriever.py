"""`TransformersCLIPRetriever`: a transformers `CLIPModel`, `SiglipModel` or `Siglip2Model` as DiscriTune's frozen
retriever."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, AutoTokenizer, BatchFeature, PreTrainedModel

from ..utils.images import to_rgb
from .base import Retriever, check_pixel_values


def _pooled(output: Any) -> torch.Tensor:
    # transformers 5 returns a model output whose `pooler_output` holds the projected features; 4.x a tensor.
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class TransformersCLIPRetriever(Retriever):
    """A frozen transformers dual encoder: `CLIPModel` (e.g. `openai/clip-vit-base-patch32`), `SiglipModel` (SigLIP,
    and SigLIP2's fixed-resolution checkpoints such as `google/siglip2-base-patch16-224`) or `Siglip2Model` (SigLIP2's
    NaFlex checkpoints such as `google/siglip2-base-patch16-naflex`).

    Captions are truncated at the text tower's `max_position_embeddings` (77 for CLIP, 64 for SigLIP2). CLIP batches
    are padded to the longest caption (its causal text tower pools at EOS, so this equals padding to 77); SigLIP and
    SigLIP2 batches are padded to the full length, as they were trained (they pool the last position).

    Images: `preprocess` returns what the model's image processor makes. For CLIP and SigLIP that is one `[N, 3, H,
    W]` pixel tensor; for `Siglip2Model` it is a `BatchFeature` of `pixel_values` `[N, P, 3 * p * p]` (each image
    resized to at most `P = max_num_patches` patches of side `p`, keeping its aspect ratio), `pixel_attention_mask`
    `[N, P]` (1 on real patches) and `spatial_shapes` `[N, 2]` (each image's patch grid), which `encode_images` reads
    back whole. The collator, the frozen-embedding cache and evaluation carry either form.

    Args:
        model (`PreTrainedModel`): a `CLIPModel`, `SiglipModel`, `Siglip2Model` or any model with
            `get_text_features`, `get_image_features` (taking the image processor's outputs as keyword arguments)
            and a `logit_scale` parameter (stored as a log).
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
        # What `get_image_features` reads: `pixel_values` alone, or with SigLIP2's patch mask and grid shapes.
        self.image_input_names = tuple(getattr(image_processor, "model_input_names", None) or ("pixel_values",))
        if "pixel_values" not in self.image_input_names:
            raise ValueError(
                f"{type(image_processor).__name__} makes {list(self.image_input_names)}, not pixel_values; pass the "
                "image processor of this model."
            )
        text_config = model.config.text_config
        self.embed_dim = (
            getattr(model.config, "projection_dim", None)  # CLIP
            or getattr(text_config, "projection_size", None)  # SigLIP / SigLIP2 text head
            or getattr(text_config, "hidden_size", None)
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
        """SigLIP and SigLIP2 pool the last position, so their batches must be padded to the full context."""
        return self.model.config.model_type.startswith("siglip")

    @property
    def reads_pixels_only(self) -> bool:
        """Whether `preprocess` returns one pixel tensor (CLIP, SigLIP) rather than a `BatchFeature` (SigLIP2)."""
        return self.image_input_names == ("pixel_values",)

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor | BatchFeature:
        """PIL images to the model's image inputs: `[N, 3, H, W]` pixels, or (SigLIP2) a `BatchFeature` of
        `pixel_values`, `pixel_attention_mask` and `spatial_shapes`, each with `N` rows."""
        features = self.image_processor(images=to_rgb(images), return_tensors="pt")
        if self.reads_pixels_only:
            return features["pixel_values"]
        return BatchFeature({name: features[name] for name in self.image_input_names})

    def encode_images(self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """What `preprocess` returns (`[N, 3, H, W]` pixels, or SigLIP2's `BatchFeature`) to `[N, D]` L2-normalised
        embeddings."""
        inputs = self._image_inputs(pixel_values)
        features = _pooled(self.model.get_image_features(**inputs))
        return F.normalize(features, dim=-1)

    def _image_inputs(self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The keyword arguments of `get_image_features`, on the retriever's device (pixels in its dtype)."""
        owner = f"{type(self).__name__} over {type(self.model).__name__}"
        if not isinstance(pixel_values, Mapping):
            if not self.reads_pixels_only:
                raise ValueError(
                    f"This {owner} reads {list(self.image_input_names)} per image, not a bare "
                    f"{type(pixel_values).__name__}: make them with its preprocess(images)."
                )
            pixel_values = {"pixel_values": pixel_values}
        missing = [name for name in self.image_input_names if name not in pixel_values]
        if missing:
            raise ValueError(
                f"The image inputs hold {sorted(pixel_values)}, but this {owner} also reads {missing}: make them with "
                "its preprocess(images)."
            )
        if self.reads_pixels_only:
            vision_config = getattr(self.model.config, "vision_config", None)
            check_pixel_values(pixel_values["pixel_values"], getattr(vision_config, "image_size", None), owner)
        rows = {name: pixel_values[name].shape[0] for name in self.image_input_names}
        if len(set(rows.values())) > 1:
            raise ValueError(f"The image inputs of this {owner} hold different numbers of images: {rows}.")
        return {
            name: pixel_values[name].to(self.device, dtype=self.dtype)
            if pixel_values[name].is_floating_point()
            else pixel_values[name].to(self.device)
            for name in self.image_input_names
        }

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
