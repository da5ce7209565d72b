"""Turn dataset rows into the tensors a DiscriTune step reads, skipping images that cannot be decoded."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..utils.images import decode_image


logger = logging.getLogger(__name__)

INDEX_COLUMN = "_discritune_index"
# Optional cached frozen-encoder outputs (see `cache_frozen_embeddings` and `docs/throughput.md`): when a row holds
# them, the collator passes them on and no pixels are prepared for that model.
POLICY_EMBEDS_COLUMN = "policy_image_embeds"
RETRIEVER_EMBEDS_COLUMN = "retriever_image_embeds"


class DiscriTuneCollator:
    """Collate dataset rows for `DiscriTuneTrainer`.

    Each batch holds `image_index` (`[B]`, the rows' dataset indices, for logging), then for the policy either
    `policy_image_embeds` (cached) or `policy_pixel_values`, and for the retriever either `retriever_image_embeds`
    (cached) or `retriever_pixel_values` (one tensor per retriever with several). Images are decoded only when
    some model needs pixels. Rows whose image cannot be decoded are dropped and counted in
    `num_unreadable_images`: web datasets hold many broken files, and one must not stop an epoch.

    Args:
        policy: the captioner (implements `preprocess`).
        reward_model: the `DiscriminativeRewardModel` (implements `preprocess`).
        image_column: the dataset column holding the images.
    """

    def __init__(self, policy, reward_model, image_column: str = "image"):
        self.policy = policy
        self.reward_model = reward_model
        self.image_column = image_column

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
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
        batch: dict[str, Any] = {
            "image_index": torch.tensor([row.get(INDEX_COLUMN, -1) for row in kept], dtype=torch.long),
            "num_unreadable_images": torch.tensor(len(rows) - len(kept)),
        }
        if not kept:
            return batch
        if cached_policy:
            batch[POLICY_EMBEDS_COLUMN] = _stack([row[POLICY_EMBEDS_COLUMN] for row in kept])
        else:
            batch["policy_pixel_values"] = self.policy.preprocess(images)
        if cached_retriever:
            if getattr(self.reward_model, "is_multi_retriever", False):  # one embedding per retriever and image
                per_retriever = len(kept[0][RETRIEVER_EMBEDS_COLUMN])
                batch[RETRIEVER_EMBEDS_COLUMN] = [
                    _stack([row[RETRIEVER_EMBEDS_COLUMN][index] for row in kept]) for index in range(per_retriever)
                ]
            else:
                batch[RETRIEVER_EMBEDS_COLUMN] = _stack([row[RETRIEVER_EMBEDS_COLUMN] for row in kept])
        else:
            batch["retriever_pixel_values"] = self.reward_model.preprocess(images)
        return batch


def _stack(embeds: list[Any]) -> torch.Tensor:
    """Cached per-image embeddings (numpy arrays or lists, as the dataset returns them) to one float32 tensor."""
    return torch.from_numpy(np.stack([np.asarray(value, dtype=np.float32) for value in embeds]))


def policy_image_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The policy's image input of a collated batch: `{"image_embeds": ...}` or `{"pixel_values": ...}`."""
    if POLICY_EMBEDS_COLUMN in batch:
        return {"image_embeds": batch[POLICY_EMBEDS_COLUMN]}
    return {"pixel_values": batch["policy_pixel_values"]}


def retriever_image_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The retriever's image input of a collated batch: `{"image_embeds": ...}` or `{"pixel_values": ...}`."""
    if RETRIEVER_EMBEDS_COLUMN in batch:
        return {"image_embeds": batch[RETRIEVER_EMBEDS_COLUMN]}
    return {"pixel_values": batch["retriever_pixel_values"]}
