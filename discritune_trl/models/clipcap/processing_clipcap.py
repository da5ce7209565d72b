"""ClipCap's processor: open_clip's image transform and GPT-2's tokenizer as one transformers `ProcessorMixin`.

`ClipCapPolicy.preprocess` and `ClipCapImageProcessor` build the same transform from the same settings
(`ClipCapConfig.clip_preprocess_cfg`), so the pixels are identical. `ClipCapProcessor` is what transformers'
`AutoProcessor` and the `image-text-to-text` pipeline (where `pipeline("image-to-text")` leads) load for a saved
ClipCap: it reads the transform from the folder's `config.json` and the tokenizer saved beside it, so a folder written
by `save_pretrained` needs no processor file of its own.
"""

from __future__ import annotations

import os
from typing import Any

import open_clip
import torch
from PIL import Image
from transformers import AutoConfig, AutoTokenizer, BatchFeature, GenerationConfig, ProcessorMixin
from transformers.image_processing_base import ImageProcessingMixin

from ...utils.images import to_rgb
from ..policy import hub_kwargs


def clipcap_image_transform(preprocess_cfg: dict[str, Any]):
    """open_clip's eval-time transform (PIL image -> `[3, H, W]` tensor) from `ClipCapConfig.clip_preprocess_cfg`."""
    return open_clip.image_transform(
        preprocess_cfg["size"],
        is_train=False,
        mean=tuple(preprocess_cfg["mean"]),
        std=tuple(preprocess_cfg["std"]),
        interpolation=preprocess_cfg.get("interpolation", "bicubic"),
        resize_mode=preprocess_cfg.get("resize_mode", "shortest"),
    )


class ClipCapImageProcessor(ImageProcessingMixin):
    r"""ClipCap's image preprocessing as a transformers image processor: open_clip's eval transform (resize,
    centre crop, normalise), exactly what `ClipCapPolicy.preprocess` computes.

    Args:
        size (`int` or `list[int]`, defaults to `224`): the encoder's input size.
        mean (`list[float]`): per-channel mean (OpenAI CLIP's by default).
        std (`list[float]`): per-channel standard deviation (OpenAI CLIP's by default).
        interpolation (`str`, defaults to `"bicubic"`): resize interpolation.
        resize_mode (`str`, defaults to `"shortest"`): open_clip's resize mode.
    """

    model_input_names = ["pixel_values"]

    def __init__(
        self,
        size: int | list[int] = 224,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        interpolation: str = "bicubic",
        resize_mode: str = "shortest",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.size = size
        self.mean = [float(value) for value in (mean or open_clip.OPENAI_DATASET_MEAN)]
        self.std = [float(value) for value in (std or open_clip.OPENAI_DATASET_STD)]
        self.interpolation = interpolation
        self.resize_mode = resize_mode

    @classmethod
    def from_clipcap_config(cls, config: Any) -> ClipCapImageProcessor:
        """The image processor of a `ClipCapConfig` (its `clip_preprocess_cfg`)."""
        return cls(**config.clip_preprocess_cfg)

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """The settings in `ClipCapConfig.clip_preprocess_cfg`'s form."""
        return {
            "size": self.size,
            "mean": self.mean,
            "std": self.std,
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }

    def __call__(self, images: Image.Image | list[Image.Image], return_tensors: str | None = "pt", **kwargs: Any):
        return self.preprocess(images, return_tensors=return_tensors, **kwargs)

    def preprocess(
        self, images: Image.Image | list[Image.Image], return_tensors: str | None = "pt", **kwargs: Any
    ) -> BatchFeature:
        """PIL images of any mode -> `BatchFeature` with `pixel_values` `[N, 3, H, W]`.

        Raises:
            TypeError: for anything but PIL images, or keyword arguments this processor does not take.
            ValueError: for `return_tensors` other than `"pt"` / `None`.
        """
        if kwargs:
            raise TypeError(f"ClipCapImageProcessor takes no {sorted(kwargs)}; its settings are {self.preprocess_cfg}.")
        if return_tensors not in ("pt", None):
            raise ValueError(f"return_tensors={return_tensors!r}: ClipCapImageProcessor returns PyTorch tensors ('pt').")
        images = [images] if isinstance(images, Image.Image) else list(images)
        not_pil = [type(image).__name__ for image in images if not isinstance(image, Image.Image)]
        if not_pil:
            raise TypeError(f"ClipCapImageProcessor takes PIL images, got {not_pil[0]}; open the file with PIL first.")
        transform = clipcap_image_transform(self.preprocess_cfg)
        pixels = torch.stack([transform(image) for image in to_rgb(images)]) if images else torch.empty(0)
        return BatchFeature({"pixel_values": pixels}, tensor_type=return_tensors)


class ClipCapProcessor(ProcessorMixin):
    r"""ClipCap's image processor and GPT-2 tokenizer in one processor, for transformers' `AutoProcessor` and the
    `image-text-to-text` pipeline.

    `processor(images=..., text=...)` returns `pixel_values` and the prompt's `input_ids` / `attention_mask`
    (left-padded); `ClipCapPolicy.generate` writes the caption after the image prefix and the prompt. `text=""` (or
    `None`) is plain captioning; a prompt such as `"a photo of"` is continued.

    Args:
        image_processor ([`ClipCapImageProcessor`]): the image transform.
        tokenizer (`PreTrainedTokenizerBase`): GPT-2's tokenizer.
    """

    def __init__(self, image_processor: ClipCapImageProcessor, tokenizer: Any):
        super().__init__(image_processor, tokenizer)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> ClipCapProcessor:
        """The processor of a saved ClipCap: the image transform from its `config.json` (or, for a folder written by
        `ClipCapProcessor.save_pretrained`, its `preprocessor_config.json`) and the tokenizer saved beside it."""
        hub = hub_kwargs(kwargs)
        try:
            config = AutoConfig.from_pretrained(pretrained_model_name_or_path, **hub)
        except (OSError, ValueError):
            config = None
        if config is not None and hasattr(config, "clip_preprocess_cfg"):
            image_processor = ClipCapImageProcessor.from_clipcap_config(config)
        else:
            image_processor = ClipCapImageProcessor.from_pretrained(pretrained_model_name_or_path, **hub)
        return cls(image_processor, AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub))

    def __call__(
        self,
        images: Image.Image | list[Image.Image] | None = None,
        text: str | list[str] | None = None,
        return_tensors: str | None = "pt",
        **kwargs: Any,
    ) -> BatchFeature:
        """Pixels and prompt ids for `ClipCapPolicy.generate`.

        Args:
            images: one PIL image or a list.
            text: one prompt for every image, or one per image; `None` / `""` for none.
            return_tensors: `"pt"`.
            kwargs: `padding` / `truncation` / `max_length` / `padding_side` (prompts are always left-padded to the
                longest, as decoding needs), accepted for the pipelines' sake; anything else is an error.

        Raises:
            ValueError: if there are no images, or a list of prompts is not one per image.
            TypeError: for other keyword arguments.
        """
        unknown = sorted(set(kwargs) - {"padding", "truncation", "max_length", "padding_side"})
        generation = [name for name in unknown if hasattr(GenerationConfig(), name)]
        if generation:
            raise TypeError(
                f"{generation} are generation settings, not processor arguments: give them to the pipeline call as "
                f"generate_kwargs={{{', '.join(f'{name!r}: ...' for name in generation)}}} (only max_new_tokens is "
                "taken directly), or to ClipCapPolicy.generate."
            )
        if unknown:
            raise TypeError(f"ClipCapProcessor takes no {unknown}.")
        if images is None:
            raise ValueError("ClipCap captions images: pass images=... (text alone is not a ClipCap input).")
        features = self.image_processor(images, return_tensors=return_tensors)
        count = len(features["pixel_values"])
        prompts = [text or ""] * count if text is None or isinstance(text, str) else list(text)
        if len(prompts) != count:
            raise ValueError(f"{len(prompts)} prompts for {count} images: pass one prompt, or one per image.")
        rows = [self.tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt in prompts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        width = max((len(row) for row in rows), default=0)
        ids = [[pad] * (width - len(row)) + row for row in rows]
        mask = [[0] * (width - len(row)) + [1] * len(row) for row in rows]
        features["input_ids"] = torch.tensor(ids, dtype=torch.long).reshape(count, width)  # [N, 0] for no prompt
        features["attention_mask"] = torch.tensor(mask, dtype=torch.long).reshape(count, width)
        return features

    def post_process_image_text_to_text(
        self, generated_outputs: torch.Tensor, skip_special_tokens: bool = True, **kwargs: Any
    ) -> list[str]:
        """Decoded texts, stripped as `ClipCapPolicy.generate_captions` strips its captions."""
        texts = self.tokenizer.batch_decode(generated_outputs, skip_special_tokens=skip_special_tokens, **kwargs)
        return [text.strip() for text in texts]

    @property
    def model_input_names(self) -> list[str]:
        return ["pixel_values", "input_ids", "attention_mask"]
