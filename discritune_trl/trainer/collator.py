"""Turn dataset rows into a `DiscriTuneBatch`, skipping images that cannot be decoded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..utils.images import decode_image
from .batch import INDEX_COLUMN, POLICY_EMBEDS_COLUMN, RETRIEVER_EMBEDS_COLUMN, DiscriTuneBatch, ImageTensors


logger = logging.getLogger(__name__)


class DiscriTuneCollator:
    """Collate dataset rows into a [`DiscriTuneBatch`] for `DiscriTuneTrainer`.

    For each model the batch holds either its cached frozen-encoder embeddings (the `policy_image_embeds` /
    `retriever_image_embeds` columns that `cache_frozen_embeddings` adds) or the pixels its `preprocess` makes.
    Images are decoded only when some model needs pixels. Rows whose image cannot be decoded are dropped and counted
    in `num_unreadable_images`: web datasets hold many broken files, and one must not stop an epoch.

    The collator needs the two `preprocess` callables only, not the models: `DiscriTuneCollator.from_models(policy,
    reward_model)` takes them from a policy and a reward model.

    Args:
        policy_preprocess: PIL images -> the policy's pixels (`CaptioningPolicy.preprocess`).
        retriever_preprocess: PIL images -> the retriever's pixels (`DiscriminativeRewardModel.preprocess`: one
            tensor or `BatchFeature`, or one per retriever when there are several).
        image_column: the dataset column holding the images.
        num_retrievers: how many retrievers the cached `retriever_image_embeds` hold per image (the reward model's
            retriever count); with more than one, the batch holds one tensor per retriever.
    """

    def __init__(
        self,
        policy_preprocess: Callable[[list[Image.Image]], torch.Tensor],
        retriever_preprocess: Callable[[list[Image.Image]], ImageTensors],
        image_column: str = "image",
        num_retrievers: int = 1,
    ):
        for name, value in (("policy_preprocess", policy_preprocess), ("retriever_preprocess", retriever_preprocess)):
            if isinstance(value, nn.Module) or not callable(value):
                raise TypeError(
                    f"{name} must be a preprocess function (PIL images -> pixels), got a {type(value).__name__}; "
                    "to collate for a policy and a reward model, use DiscriTuneCollator.from_models(policy, "
                    "reward_model)."
                )
        if num_retrievers < 1:
            raise ValueError(f"num_retrievers={num_retrievers}; a reward model has at least one retriever.")
        self.policy_preprocess = policy_preprocess
        self.retriever_preprocess = retriever_preprocess
        self.image_column = image_column
        self.num_retrievers = num_retrievers

    @classmethod
    def from_models(
        cls, policy: nn.Module, reward_model: nn.Module, image_column: str = "image"
    ) -> DiscriTuneCollator:
        """The collator of `policy` (a `CaptioningPolicy`) and `reward_model` (a `DiscriminativeRewardModel`)."""
        retrievers = getattr(reward_model, "retrievers", None)
        num_retrievers = len(retrievers) if getattr(reward_model, "is_multi_retriever", False) else 1
        return cls(
            policy.preprocess, reward_model.preprocess, image_column=image_column, num_retrievers=num_retrievers
        )

    def __call__(self, rows: list[dict[str, Any]]) -> DiscriTuneBatch:
        cached_policy = bool(rows) and POLICY_EMBEDS_COLUMN in rows[0]
        cached_retriever = bool(rows) and RETRIEVER_EMBEDS_COLUMN in rows[0]
        images, kept = [], []
        for row in rows:
            if cached_policy and cached_retriever:  # both encoders cached: the image itself is never read
                kept.append(row)
                continue
            try:
                images.append(decode_image(row[self.image_column]))
                kept.append(row)
            except Exception as error:  # any decoding failure: skip the row, never the epoch
                logger.warning("Skipping unreadable image (row %s): %s", row.get(INDEX_COLUMN, "?"), error)
        return DiscriTuneBatch(
            image_index=torch.tensor([row.get(INDEX_COLUMN, -1) for row in kept], dtype=torch.long),
            num_unreadable_images=torch.tensor(len(rows) - len(kept)),
            **(self._model_inputs(kept, images) if kept else {}),
        )

    def _model_inputs(self, rows: list[dict[str, Any]], images: list[Image.Image]) -> dict[str, Any]:
        """Each model's cached embeddings when the rows hold them, else the pixels its `preprocess` makes."""
        inputs: dict[str, Any] = {}
        if POLICY_EMBEDS_COLUMN in rows[0]:
            inputs["policy_image_embeds"] = _stack([row[POLICY_EMBEDS_COLUMN] for row in rows])
        else:
            inputs["policy_pixel_values"] = self.policy_preprocess(images)
        if RETRIEVER_EMBEDS_COLUMN in rows[0]:
            inputs["retriever_image_embeds"] = self._retriever_embeds([row[RETRIEVER_EMBEDS_COLUMN] for row in rows])
        else:
            inputs["retriever_pixel_values"] = self.retriever_preprocess(images)
        return inputs

    def _retriever_embeds(self, per_row: list[Any]) -> ImageTensors:
        """Cached retriever embeddings, one `[B, D]` tensor (or one per retriever)."""
        if self.num_retrievers == 1:
            return _stack(per_row)
        if len(per_row[0]) != self.num_retrievers:
            raise ValueError(
                f"The cached {RETRIEVER_EMBEDS_COLUMN} hold {len(per_row[0])} embedding(s) per image for "
                f"{self.num_retrievers} retrievers: recompute them with cache_frozen_embeddings for this reward model."
            )
        return [_stack([row[index] for row in per_row]) for index in range(self.num_retrievers)]


def _stack(embeds: list[Any]) -> torch.Tensor:
    """Cached per-image embeddings (numpy arrays or lists, as the dataset returns them) to one float32 tensor."""
    return torch.from_numpy(np.stack([np.asarray(value, dtype=np.float32) for value in embeds]))
