"""Frozen-embedding cache: run the frozen image encoders once per image, not once per training step.

The retriever and the captioner's image encoder never change during DiscriTune, so their image embeddings are
computed in one `datasets.map` pass and stored as two columns (`policy_image_embeds`, `retriever_image_embeds`).
`DiscriTuneCollator` passes those columns on instead of pixels, so every later epoch skips both encoders. When
the captioner's encoder and the retriever are the same CLIP (ClipCap on the paper's ViT-B/32 with a ViT-B/32
retriever), each image is encoded once for both.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from datasets.fingerprint import Hasher
from torch import nn

from ..models.clipcap import ClipCapPolicy
from ..retrievers.open_clip_retriever import OpenCLIPRetriever
from ..utils.images import decode_image
from .batch import INDEX_COLUMN, POLICY_EMBEDS_COLUMN, RETRIEVER_EMBEDS_COLUMN


logger = logging.getLogger(__name__)

# Bumped whenever what the cache stores changes, so that older cache files are not reused.
_CACHE_FORMAT_VERSION = 1


def policy_caches_image_features(policy: nn.Module) -> bool:
    """Whether `policy.encode_images` returns frozen features worth caching.

    Captioners whose vision encoder trains (BLIP with `freeze_vision_encoder=False`) or cannot run apart from the
    text model (GIT) return the pixels unchanged and say so with `caches_image_features = False` (declared by
    `CaptioningPolicy`, true by default: ClipCap's encoder is always frozen).
    """
    return bool(policy.caches_image_features)


def shares_clip_encoder(policy: nn.Module, reward_model: nn.Module) -> bool:
    """Whether the policy's frozen encoder and the (single) retriever's image tower are the same CLIP.

    True when the policy is a `ClipCapPolicy` and the retriever an `OpenCLIPRetriever` (neither overriding
    `encode_images`) whose `visual` towers are the same module object, or modules of the same class with equal
    weights (same dtype, same device). Then `retriever embedding == normalize(policy embedding)` exactly, so one
    encoder pass serves both; `cache_frozen_embeddings` also checks, batch by batch, that both preprocessings give
    the same pixels before sharing.
    """
    if getattr(reward_model, "is_multi_retriever", False) or not hasattr(reward_model, "retriever"):
        return False
    if hasattr(policy, "get_base_model"):  # a PEFT-wrapped policy: adapters never touch the frozen encoder
        policy = policy.get_base_model()
    retriever = reward_model.retriever
    if not isinstance(policy, ClipCapPolicy) or type(policy).encode_images is not ClipCapPolicy.encode_images:
        return False
    if not isinstance(retriever, OpenCLIPRetriever):
        return False
    if type(retriever).encode_images is not OpenCLIPRetriever.encode_images:
        return False
    policy_visual, retriever_visual = policy.visual, retriever.model.visual
    if policy_visual is retriever_visual:
        return True
    if type(policy_visual) is not type(retriever_visual):
        return False
    policy_state, retriever_state = policy_visual.state_dict(), retriever_visual.state_dict()
    if policy_state.keys() != retriever_state.keys():
        return False
    return all(
        a.dtype == b.dtype and a.device == b.device and a.shape == b.shape and torch.equal(a, b)
        for a, b in ((policy_state[key], retriever_state[key]) for key in policy_state)
    )


def cache_frozen_embeddings(
    dataset: datasets.Dataset,
    policy: nn.Module,
    reward_model: nn.Module,
    image_column: str = "image",
    batch_size: int = 64,
    share_encoder: bool | None = None,
    desc: str = "Caching frozen image embeddings",
) -> datasets.Dataset:
    """Add the frozen encoders' image embeddings to `dataset`, computed once per image.

    Runs one `datasets.map` pass (with a progress bar) that adds:

    - `policy_image_embeds`: `policy.encode_images(policy.preprocess(images))` (`[D]` per image for ClipCap,
      `[N, D]` patch features for frozen BLIP/ViT-GPT2 encoders). Skipped when the policy has nothing to cache
      (see `policy_caches_image_features`): its pixels are then prepared at every step, as without a cache.
    - `retriever_image_embeds`: `reward_model.encode_images(reward_model.preprocess(images))` (`[D]`, or one `[D_r]`
      per retriever when the reward model has several).

    The embeddings are stored as float32 in the policy's / retriever's own precision (fp32 models give results
    identical to the uncached path). The returned dataset has these columns in numpy format (the other columns are
    returned as before); `save_to_disk` keeps them, so a saved cached dataset is reused by later runs as is:
    `DiscriTuneCollator` reads a cached column instead of preparing pixels, and skips decoding the image when both
    are present. Rows whose image cannot be decoded are dropped (and counted in a warning). For file-backed datasets
    `datasets` also keeps the result in its cache files, keyed by the dataset and the frozen weights.

    Args:
        dataset: a `datasets.Dataset` with an image column.
        policy: the captioner (`ClipCapPolicy`, `BlipPolicy`, ...), on the device to encode on.
        reward_model: the `DiscriminativeRewardModel`, on the device to encode on.
        image_column: the column holding the images.
        batch_size: images per encoder batch.
        share_encoder: encode once for both when the captioner's encoder and the retriever are the same CLIP;
            `None` detects it with `shares_clip_encoder`, `False` never shares.
        desc: progress-bar label.

    Returns:
        The dataset with the embedding columns (the input dataset is not modified).
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"cache_frozen_embeddings needs a datasets.Dataset, got {type(dataset).__name__}; an IterableDataset "
            "streams each image once per epoch anyway, so train it without the cache (cache_embeddings=False)."
        )
    if image_column not in dataset.column_names:
        raise ValueError(f"dataset has no column {image_column!r}; its columns are {dataset.column_names}.")
    cache_policy = policy_caches_image_features(policy)
    if not cache_policy:
        reason = getattr(policy, "uncached_image_features_reason", None) or "it declares caches_image_features=False"
        logger.info("The policy's image features are not cached (%s): %s.", type(policy).__name__, reason)
    share = shares_clip_encoder(policy, reward_model) if share_encoder is None else share_encoder
    if share and not shares_clip_encoder(policy, reward_model):
        raise ValueError(
            "share_encoder=True, but the policy's encoder and the retriever's image tower differ (different modules "
            "or weights, or a policy/retriever that is not ClipCapPolicy/OpenCLIPRetriever); use share_encoder=None."
        )
    share = share and cache_policy
    produced = [RETRIEVER_EMBEDS_COLUMN] + ([POLICY_EMBEDS_COLUMN] if cache_policy else [])
    existing = [name for name in produced if name in dataset.column_names]
    if existing:
        dataset = dataset.remove_columns(existing)  # recompute: the models may differ from the cached ones
    unreadable = 0

    def encode_batch(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        nonlocal unreadable
        images, kept = [], []
        for row, value in enumerate(batch[image_column]):
            try:
                images.append(decode_image(value))
                kept.append(row)
            except Exception as error:  # any decoding failure drops the row, as the collator would
                unreadable += 1
                index = batch[INDEX_COLUMN][row] if INDEX_COLUMN in batch else "?"
                logger.warning("Dropping unreadable image (row %s) from the cache: %s", index, error)
        output = {name: [values[row] for row in kept] for name, values in batch.items()}
        if not images:
            output.update({name: [] for name in produced})
            return output
        retriever_pixels = reward_model.preprocess(images)
        policy_pixels = policy.preprocess(images) if cache_policy else None
        with torch.no_grad():
            if share and torch.equal(policy_pixels, retriever_pixels):
                policy_embeds = policy.encode_images(policy_pixels)  # [B, D]
                retriever_embeds = F.normalize(policy_embeds, dim=-1)  # what the retriever's encode_images returns
            else:
                policy_embeds = policy.encode_images(policy_pixels) if cache_policy else None
                retriever_embeds = reward_model.encode_images(retriever_pixels)
        output[RETRIEVER_EMBEDS_COLUMN] = _rows(retriever_embeds)
        if cache_policy:
            output[POLICY_EMBEDS_COLUMN] = _rows(policy_embeds)
        return output

    fingerprint = Hasher.hash(
        [
            _CACHE_FORMAT_VERSION,
            dataset._fingerprint,
            image_column,
            cache_policy,
            share,
            type(policy).__qualname__,
            _frozen_weights_digest(policy),
            type(reward_model).__qualname__,
            _frozen_weights_digest(reward_model),
        ]
    )
    cached = dataset.map(
        encode_batch,
        batched=True,
        batch_size=batch_size,
        remove_columns=dataset.column_names,
        new_fingerprint=fingerprint,
        desc=desc,
    )
    if unreadable:
        logger.warning("%d unreadable images were dropped from the cached dataset.", unreadable)
    return cached.with_format("numpy", columns=produced, output_all_columns=True)


def _rows(embeds: torch.Tensor | list[torch.Tensor]) -> list[Any]:
    """Per-image float32 numpy rows of `[B, ...]` embeddings, or of one such tensor per retriever."""
    if isinstance(embeds, (list, tuple)):
        per_retriever = [_rows(tensor) for tensor in embeds]
        return [list(row) for row in zip(*per_retriever)]
    return list(embeds.detach().float().cpu().numpy().astype(np.float32))


def _frozen_weights_digest(module: nn.Module) -> str:
    """A digest of the parameters that do not train (what the cached embeddings depend on)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, parameter in module.named_parameters():
        if parameter.requires_grad:
            continue
        tensor = parameter.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
