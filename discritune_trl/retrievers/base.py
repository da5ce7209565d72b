"""`Retriever`: the extension point for text-to-image retrievers used as DiscriTune's judge."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from PIL import Image
from torch import nn


class Retriever(nn.Module):
    """A frozen dual encoder that embeds captions and images in one space.

    Subclasses implement `preprocess`, `encode_images` and `encode_texts` (both encoders return
    L2-normalised embeddings) and expose `logit_scale`. Matching scores are
    `logit_scale * text_embeds @ image_embeds.T`.

    `preprocess` usually returns one pixel tensor with a row per image. A retriever that reads several tensors per
    image (SigLIP2's patches, patch mask and grid shapes) returns a `transformers.BatchFeature` (a mapping of tensors,
    each with a row per image) instead; the collator, the frozen-embedding cache and evaluation pass it to
    `encode_images` unchanged, moved to the device by its `.to`.

    A retriever is frozen: call `self.freeze()` at the end of `__init__`; no parameter requires grad, and
    `.train()` leaves it in eval mode.

    Attributes:
        embed_dim (`int` or `None`): size `D` of the shared embedding space, when known. Optional; the reward
            model uses it to reject a hard-negative bank of the wrong size before the first step.

    `examples/custom_retriever.py` writes one from scratch in a few lines; `docs/rewards.md` explains the contract.
    """

    embed_dim: int | None = None

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor | Mapping[str, torch.Tensor]:
        """PIL images (any mode) to what `encode_images` reads: a pixel tensor, or a `BatchFeature` of tensors with
        one row per image."""
        raise NotImplementedError

    def encode_images(self, pixel_values: torch.Tensor | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """`[N, C, H, W]` pixels (or the `BatchFeature` that `preprocess` made) to `[N, D]` L2-normalised image
        embeddings."""
        raise NotImplementedError

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """`B` captions to `[B, D]` L2-normalised text embeddings."""
        raise NotImplementedError

    @property
    def logit_scale(self) -> torch.Tensor:
        """Temperature that turns cosine similarities into logits (100 for OpenAI CLIP)."""
        raise NotImplementedError

    def freeze(self) -> Retriever:
        """Stop gradients to every parameter and switch to eval mode."""
        for parameter in self.parameters():
            parameter.requires_grad_(False)
        return super().train(False)

    @property
    def device(self) -> torch.device:
        """Device of the retriever's first parameter or buffer (CPU for a retriever without either)."""
        for tensor in self.parameters():
            return tensor.device
        for tensor in self.buffers():
            return tensor.device
        return torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the retriever's first floating parameter (float32 for a retriever without one)."""
        for tensor in self.parameters():
            if tensor.is_floating_point():
                return tensor.dtype
        return torch.float32

    def train(self, mode: bool = True) -> Retriever:
        # A retriever is a frozen judge: `Trainer` calling `.train()` on the whole model must not
        # switch on dropout or batch-norm updates here.
        return super().train(False)


def check_pixel_values(pixel_values: torch.Tensor, image_size: int | tuple[int, int] | None, owner: str) -> None:
    """Refuse pixels that `owner` cannot read, naming their shape and the expected one (instead of a shape error deep
    inside the image tower)."""
    if image_size is None:
        return
    height, width = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if (
        not isinstance(pixel_values, torch.Tensor)
        or pixel_values.dim() != 4
        or pixel_values.shape[-2:] != (height, width)
    ):
        shape = list(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
        raise ValueError(
            f"pixel_values of shape {shape}, but this {owner} reads [N, 3, {height}, {width}] images: make them with "
            "its preprocess(images)."
        )
