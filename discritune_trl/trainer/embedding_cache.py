"""Frozen-embedding cache: run the frozen image encoders once per image, not once per training step.

The retriever and the captioner's image encoder never change during DiscriTune, so their image embeddings are
computed in one pass (sharded over processes, resumable, decoding in worker processes) and stored as two columns (`policy_image_embeds`, `retriever_image_embeds`).
`DiscriTuneCollator` passes those columns on instead of pixels, so every later epoch skips both encoders. When
the captioner's encoder and the retriever are the same CLIP (ClipCap on the paper's ViT-B/32 with a ViT-B/32
retriever), each image is encoded once for both.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from typing import Any

import datasets
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from datasets.fingerprint import Hasher
from torch import nn
from tqdm.auto import tqdm

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
    cache_dir: str | None = None,
    num_workers: int = 0,
    shard_size: int = 10_000,
    process_index: int = 0,
    num_processes: int = 1,
) -> datasets.Dataset:
    """Add the frozen encoders' image embeddings to `dataset`, computed once per image.

    Adds two columns:

    - `policy_image_embeds`: `policy.encode_images(policy.preprocess(images))` (`[D]` per image for ClipCap,
      `[N, D]` patch features for frozen BLIP/ViT-GPT2 encoders). Skipped when the policy has nothing to cache
      (see `policy_caches_image_features`): its pixels are then prepared at every step, as without a cache.
    - `retriever_image_embeds`: `reward_model.encode_images(reward_model.preprocess(images))` (`[D]`, or one `[D_r]`
      per retriever when the reward model has several).

    **The pass** is split into *cache shards* of `shard_size` consecutive rows. With `num_processes > 1` (every
    process calls this with its `process_index`, `torch.distributed` initialised), each process encodes only its
    contiguous share of the shards (`Dataset.shard(num_shards=num_processes, index=process_index,
    contiguous=True)` over the shards), and then all processes read the one combined cache. Images are decoded and
    preprocessed in `num_workers` `DataLoader` workers (at most one per batch of the share) while the encoders run in
    this process; the progress bar counts images/s. With `cache_dir`, each finished shard is saved there (under a
    key of the dataset, the frozen weights and these settings) and a pass that was killed restarts without redoing
    finished shards; later runs with the same key reuse the whole cache. `cache_dir` must be readable by every
    process (on several machines: a shared filesystem); without it (one process only) nothing is written.

    The embeddings are stored as float32 in the policy's / retriever's own precision (fp32 models give results
    identical to the uncached path). The returned dataset has these columns in numpy format (the other columns are
    returned as before); `save_to_disk` keeps them, so a saved cached dataset is reused by later runs as is:
    `DiscriTuneCollator` reads a cached column instead of preparing pixels, and skips decoding the image when both
    are present. Rows whose image cannot be decoded are dropped (and counted in a warning).

    Args:
        dataset: a `datasets.Dataset` with an image column.
        policy: the captioner (`ClipCapPolicy`, `BlipPolicy`, ...), on the device to encode on.
        reward_model: the `DiscriminativeRewardModel`, on the device to encode on.
        image_column: the column holding the images.
        batch_size: images per encoder batch.
        share_encoder: encode once for both when the captioner's encoder and the retriever are the same CLIP;
            `None` detects it with `shares_clip_encoder`, `False` never shares.
        desc: progress-bar label.
        cache_dir: folder for the resumable cache shards (shared by all processes); `None`: keep them in memory.
        num_workers: `DataLoader` workers decoding and preprocessing images (0: in this process).
        shard_size: rows per cache shard, the unit of resumption.
        process_index: this process's rank among `num_processes`.
        num_processes: processes sharing the pass.

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
    if num_processes > 1 and cache_dir is None:
        raise ValueError(
            f"num_processes={num_processes} needs a cache_dir that every process can read: each process encodes "
            "its share there and then reads the others'."
        )
    if shard_size < 1 or num_workers < 0:
        raise ValueError(f"shard_size={shard_size} must be >= 1 and num_workers={num_workers} >= 0.")
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
    key = Hasher.hash(
        [
            _CACHE_FORMAT_VERSION,
            dataset._fingerprint,
            len(dataset),
            image_column,
            cache_policy,
            share,
            shard_size,
            type(policy).__qualname__,
            _frozen_weights_digest(policy),
            type(reward_model).__qualname__,
            _frozen_weights_digest(reward_model),
        ]
    )
    key = _same_on_every_process(key)  # one folder for all, even if a fingerprint were drawn at random
    folder = None if cache_dir is None else os.path.join(cache_dir, f"embeddings-{key}")
    bounds = [(start, min(start + shard_size, len(dataset))) for start in range(0, len(dataset), shard_size)]
    mine = _contiguous_share(len(bounds), process_index, num_processes)
    read_columns = [image_column] + ([INDEX_COLUMN] if INDEX_COLUMN in dataset.column_names else [])
    images = _undecoded(dataset.select_columns(read_columns), image_column)
    encoder = _ShardEncoder(policy, reward_model, image_column, batch_size, num_workers, cache_policy, share)

    todo = [bounds[i] for i in mine if folder is None or not os.path.isdir(_shard_path(folder, *bounds[i]))]
    shards: dict[tuple[int, int], datasets.Dataset] = {}
    if todo:
        progress = tqdm(
            total=sum(end - start for start, end in todo),
            desc=desc if num_processes == 1 else f"{desc} [process {process_index}/{num_processes}]",
            unit="img",
            unit_scale=True,
            disable=process_index != 0 or not datasets.is_progress_bar_enabled(),  # as datasets' own passes
        )
        for start, end in todo:
            shard = encoder.encode(images.select(range(start, end)), progress)
            if folder is None:
                shards[(start, end)] = shard
            else:
                _save_atomically(shard, _shard_path(folder, start, end))
        progress.close()
    if num_processes > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()  # every process's share is on disk
    parts = []
    for start, end in bounds:
        if (start, end) in shards:
            parts.append(shards[(start, end)])
            continue
        path = _shard_path(folder, start, end)
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"The embedding-cache shard {path} (rows {start}-{end}) is missing after every process finished its "
                "share: the processes do not see the same cache_dir. On several machines point embedding_cache_dir "
                "at a shared filesystem."
            )
        parts.append(datasets.load_from_disk(path))
    embeds = _concatenate_shards(parts) if parts else datasets.Dataset.from_dict({name: [] for name in produced})
    readable = ~np.asarray(embeds.data.column(RETRIEVER_EMBEDS_COLUMN).is_null())
    unreadable = int((~readable).sum())
    cached = datasets.concatenate_datasets([dataset, embeds], axis=1)
    if unreadable:
        logger.warning("%d unreadable images were dropped from the cached dataset.", unreadable)
        cached = cached.select(np.flatnonzero(readable))
    return cached.with_format("numpy", columns=produced, output_all_columns=True)


class _ShardEncoder:
    """Encodes the rows of one cache shard: decoding and preprocessing in `DataLoader` workers, encoders here."""

    def __init__(self, policy, reward_model, image_column, batch_size, num_workers, cache_policy, share):
        self.policy, self.reward_model = policy, reward_model
        self.image_column, self.batch_size, self.num_workers = image_column, batch_size, num_workers
        self.cache_policy, self.share = cache_policy, share

    def encode(self, rows: datasets.Dataset, progress) -> datasets.Dataset:
        """`rows` (one image column, undecoded) to a dataset of the embedding columns, `None` where unreadable."""
        num_batches = -(-len(rows) // self.batch_size)
        loader = torch.utils.data.DataLoader(
            rows,
            batch_size=self.batch_size,
            num_workers=min(self.num_workers, num_batches) if num_batches > 1 else 0,
            collate_fn=self._prepare,
        )
        columns: dict[str, list[Any]] = {RETRIEVER_EMBEDS_COLUMN: []}
        if self.cache_policy:
            columns[POLICY_EMBEDS_COLUMN] = []
        for kept, policy_pixels, retriever_pixels, count in loader:
            retriever_rows: list[Any] = [None] * count
            policy_rows: list[Any] = [None] * count
            if kept:
                with torch.no_grad():
                    if self.share and torch.equal(policy_pixels, retriever_pixels):
                        policy_embeds = self.policy.encode_images(policy_pixels)  # [B, D]
                        retriever_embeds = F.normalize(policy_embeds, dim=-1)  # what the retriever's would return
                    else:
                        policy_embeds = self.policy.encode_images(policy_pixels) if self.cache_policy else None
                        retriever_embeds = self.reward_model.encode_images(retriever_pixels)
                for row, value in zip(kept, _rows(retriever_embeds)):
                    retriever_rows[row] = value
                if self.cache_policy:
                    for row, value in zip(kept, _rows(policy_embeds)):
                        policy_rows[row] = value
            columns[RETRIEVER_EMBEDS_COLUMN].extend(retriever_rows)
            if self.cache_policy:
                columns[POLICY_EMBEDS_COLUMN].extend(policy_rows)
            progress.update(count)
        return datasets.Dataset.from_dict(columns)

    def _prepare(self, rows: list[dict[str, Any]]):
        """In a worker: decode and preprocess a batch; unreadable rows are dropped and logged."""
        images, kept = [], []
        for row, value in enumerate(rows):
            try:
                images.append(decode_image(value[self.image_column]))
                kept.append(row)
            except Exception as error:  # any decoding failure drops the row, as the collator would
                logger.warning(
                    "Dropping unreadable image (row %s) from the cache: %s", value.get(INDEX_COLUMN, "?"), error
                )
        if not images:
            return kept, None, None, len(rows)
        retriever_pixels = self.reward_model.preprocess(images)
        policy_pixels = self.policy.preprocess(images) if self.cache_policy else None
        return kept, policy_pixels, retriever_pixels, len(rows)


def _contiguous_share(num_shards: int, process_index: int, num_processes: int) -> range:
    """This process's shards: `Dataset.shard(num_shards=num_processes, index=process_index, contiguous=True)`'s
    split, applied to the list of cache shards (the first `num_shards % num_processes` processes take one more)."""
    size, extra = divmod(num_shards, num_processes)
    start = process_index * size + min(process_index, extra)
    return range(start, start + size + (process_index < extra))


def _undecoded(dataset: datasets.Dataset, image_column: str) -> datasets.Dataset:
    """Images as stored (bytes or paths), so that a broken file fails in `decode_image`, where it is counted."""
    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image) and feature.decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def _shard_path(folder: str, start: int, end: int) -> str:
    return os.path.join(folder, f"rows-{start:012d}-{end:012d}")


def _save_atomically(shard: datasets.Dataset, path: str) -> None:
    """Save to a temporary folder and rename it: a shard folder exists only once it is complete."""
    partial = f"{path}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    shard.save_to_disk(partial)
    try:
        os.replace(partial, path)
    except OSError:  # another process finished the same shard first (a rerun with another layout)
        shutil.rmtree(partial, ignore_errors=True)
        if not os.path.isdir(path):
            raise


def _concatenate_shards(parts: list[datasets.Dataset]) -> datasets.Dataset:
    """Concatenate cache shards; a shard of unreadable images only has null-typed columns, cast to the others'."""
    typed = next((part for part in parts if all(not _is_null(f) for f in part.features.values())), None)
    if typed is not None:
        parts = [part if part.features == typed.features else part.cast(typed.features) for part in parts]
    return datasets.concatenate_datasets(parts)


def _is_null(feature: Any) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype == "null"


def _same_on_every_process(value: str) -> str:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]
    return value


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
