"""`DiscriminativeRewardModel`: how well a frozen retriever, reading a caption, finds the captioned image."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torch import nn
from transformers.utils import ModelOutput

from ..retrievers.base import Retriever
from .distributed import gather_rows_by_process, process_rank_and_count
from .hard_negatives import mine_hard_negatives
from .pools import pool_bounds


REWARD_TYPES = ("log_prob", "accuracy", "cosine")
MULTI_RETRIEVER_MODES = ("mean", "alternate")

# One pixel tensor / embedding tensor, or one per retriever (in `reward_model.retrievers` order). A retriever's
# pixels may be a mapping of tensors (SigLIP2's `BatchFeature`): that is one retriever's input, not a list.
ImageInputs = torch.Tensor | Mapping[str, torch.Tensor] | Sequence[torch.Tensor | Mapping[str, torch.Tensor]]


@dataclass
class RewardOutput(ModelOutput):
    """What `DiscriminativeRewardModel` returns for `B` captions (no gradients).

    Args:
        rewards (`torch.FloatTensor` of shape `[B]`): one reward per caption.
        logits (`torch.FloatTensor` of shape `[B, N]`): `logit_scale * cosine` of each caption with each
            candidate: the images of the caption's pool (the whole, possibly global, batch unless `pool_size` is
            given; `-inf` after the last image of a pool smaller than the largest), then the caption's own hard
            negatives (`-inf` where fewer than `num_hard_negatives` passed the similarity ceiling).
        accuracy (`torch.FloatTensor` of shape `[B]`): 1.0 where the target scores strictly above every other
            candidate, else 0.0 (with several retrievers averaged with `"mean"`, the fraction that retrieve it).
        target_indices (`torch.LongTensor` of shape `[B]`): column of each caption's target in `logits`.
        pool_sizes (`torch.LongTensor` of shape `[P]`): images in each of the `P` pools this process's captions
            were scored in (hard negatives not counted).
    """

    rewards: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    accuracy: torch.FloatTensor | None = None
    target_indices: torch.LongTensor | None = None
    pool_sizes: torch.LongTensor | None = None


class DiscriminativeRewardModel(nn.Module):
    """Rewards captions by how well a frozen retriever picks their image out of the candidate images.

    For caption `c` of target image `i`, with candidates `C` (the images of the batch plus optional hard
    negatives), `logits[c, j] = logit_scale * text_embed(c) . image_embed(j)` and the paper's reward is
    `log_softmax(logits[c])[i]` (Section 3).

    **Candidates.** By default every image of the batch is a candidate for every caption (in-batch distractors).
    When `torch.distributed` is initialised (e.g. by `accelerate launch`) and `gather_across_processes=True`, the
    image embeddings of all processes are gathered (processes may hold different numbers of images), so 4 processes
    x 25 images behave like the paper's batch of 100; each process gets rewards for its own captions only, and
    `target_indices` are offset by the images of the processes before it. Every process must call `forward` the
    same number of times.

    **Pools** (`forward(pool_size=..., processes_per_pool=...)`, what `DiscriTuneTrainer` passes from
    `DiscriTuneConfig.pool_size`; see `discritune_trl.rewards.pools`). The images of `processes_per_pool`
    consecutive processes (1: this process's only, no gather) are split into consecutive pools of `pool_size`
    images, and each caption is scored against its own pool only: 1,000 images in pools of 100 are ten times the
    paper's task, not one harder task. Hard negatives are added to each caption's pool.

    **Several captions per image.** `captions` may hold `G` captions per image (`len(captions) == G * num_images`),
    the `G` captions of an image consecutive (as `generate_captions(num_return_sequences=G)` returns them); the
    targets are then `repeat_interleave`d. Any other layout: pass `target_indices`.

    **Hard negatives** (Appendix D.2). With `num_hard_negatives=k`, each caption also gets the `k` images of
    `hard_negative_bank` nearest to its target (image-embedding cosine), skipping the target itself and
    near-duplicates above `similarity_ceiling`. Pass `target_bank_indices` to `forward` to exclude the target by
    its bank row.

    **Several retrievers.** `retriever` may be a list. `multi_retriever="mean"` averages rewards, logits and
    accuracy over all retrievers (the in-batch columns are the same images for all; hard-negative column `j` is
    each retriever's own `j`-th neighbour). `"alternate"` uses one retriever per call, `step % num_retrievers`
    (`step` passed to `forward`, else the number of successful calls so far: a call that raises does not move it). Each retriever has its own preprocessing and embedding
    space, so `preprocess` / `encode_images` return one tensor per retriever and `forward` takes such a list
    (cache the whole list); with `"alternate"` only the active retriever's entry is read. `hard_negative_bank` is
    then one `[M, D_r]` tensor per retriever.

    Args:
        retriever (`Retriever` or `list[Retriever]`): the frozen judge(s).
        reward_type (`str`, defaults to `"log_prob"`): `"log_prob"` (paper default), `"accuracy"` (1 if the target
            scores highest else 0) or `"cosine"` (cosine of caption and target only; CLIPScore-like, not
            discriminative). Subclass and override `compute_rewards` for another.
        num_hard_negatives (`int`, defaults to 0): `k` mined neighbours appended per caption.
        hard_negative_bank (`torch.Tensor` of shape `[M, D]`, or one per retriever): image embeddings of the bank
            (e.g. the training set) from the same retriever's `encode_images`; re-normalised here.
        similarity_ceiling (`float`, defaults to 0.8): neighbours with a cosine above it are near-duplicates and
            skipped (Appendix A's value); `None` keeps all but the target itself.
        gather_across_processes (`bool`, defaults to `True`): use the global batch as candidates.
        multi_retriever (`str`, defaults to `"mean"`): `"mean"` or `"alternate"`, for several retrievers.
    """

    def __init__(
        self,
        retriever: Retriever | Sequence[Retriever],
        reward_type: str = "log_prob",
        num_hard_negatives: int = 0,
        hard_negative_bank: torch.Tensor | Sequence[torch.Tensor] | None = None,
        similarity_ceiling: float | None = 0.8,
        gather_across_processes: bool = True,
        multi_retriever: str = "mean",
    ):
        super().__init__()
        retrievers = list(retriever) if isinstance(retriever, (list, tuple, nn.ModuleList)) else [retriever]
        if not retrievers:
            raise ValueError("retriever is an empty list; pass at least one Retriever.")
        for index, candidate in enumerate(retrievers):
            if not isinstance(candidate, Retriever):
                raise TypeError(
                    f"retriever[{index}] is a {type(candidate).__name__}; wrap it in a discritune_trl.Retriever "
                    "subclass (see docs/rewards.md)."
                )
        if reward_type not in REWARD_TYPES and type(self).compute_rewards is DiscriminativeRewardModel.compute_rewards:
            raise ValueError(
                f"reward_type={reward_type!r} is not one of {REWARD_TYPES}; for a new reward, subclass "
                "DiscriminativeRewardModel and override compute_rewards."
            )
        if multi_retriever not in MULTI_RETRIEVER_MODES:
            raise ValueError(f"multi_retriever={multi_retriever!r} is not one of {MULTI_RETRIEVER_MODES}.")
        if num_hard_negatives < 0:
            raise ValueError(f"num_hard_negatives={num_hard_negatives} must be >= 0.")
        self.retrievers = nn.ModuleList(retrievers)
        self.reward_type = reward_type
        self.num_hard_negatives = num_hard_negatives
        self.similarity_ceiling = similarity_ceiling
        self.gather_across_processes = gather_across_processes
        self.multi_retriever = multi_retriever
        self._active_index: int | None = None  # set while `compute_rewards` runs
        self._num_calls = 0
        self.hard_negative_banks: list[str] | None = None
        self._register_banks(hard_negative_bank)

    def set_hard_negative_bank(
        self, hard_negative_bank: torch.Tensor | Sequence[torch.Tensor], num_hard_negatives: int | None = None
    ) -> None:
        """Set (or replace) the hard-negative bank once its embeddings exist, e.g. from the trainer's frozen-embedding
        cache of the training images, and optionally `num_hard_negatives` with it (validated as in `__init__`)."""
        if num_hard_negatives is not None:
            if num_hard_negatives < 0:
                raise ValueError(f"num_hard_negatives={num_hard_negatives} must be >= 0.")
            self.num_hard_negatives = num_hard_negatives
        self._register_banks(hard_negative_bank)

    def _register_banks(self, hard_negative_bank: torch.Tensor | Sequence[torch.Tensor] | None) -> None:
        if hard_negative_bank is None:
            if self.num_hard_negatives > 0:
                raise ValueError(
                    f"num_hard_negatives={self.num_hard_negatives} needs hard_negative_bank=<[M, D] image "
                    "embeddings>, e.g. reward_model.encode_images(...) over the training images."
                )
            self.hard_negative_banks = None
            return
        if self.num_hard_negatives == 0:
            warnings.warn("hard_negative_bank is ignored because num_hard_negatives=0.", stacklevel=3)
        banks = [hard_negative_bank] if isinstance(hard_negative_bank, torch.Tensor) else list(hard_negative_bank)
        if len(banks) != len(self.retrievers):
            raise ValueError(
                f"Got {len(banks)} hard-negative banks for {len(self.retrievers)} retrievers; pass one [M, D] "
                "tensor per retriever, in the same order."
            )
        for index, (bank, retriever) in enumerate(zip(banks, self.retrievers)):
            if bank.ndim != 2:
                raise ValueError(f"hard_negative_bank[{index}] has shape {tuple(bank.shape)}, expected [M, D].")
            if retriever.embed_dim is not None and bank.shape[1] != retriever.embed_dim:
                raise ValueError(
                    f"hard_negative_bank[{index}] has embedding size {bank.shape[1]} but {type(retriever).__name__} "
                    f"embeds images in {retriever.embed_dim} dimensions; build the bank with that retriever's "
                    "encode_images."
                )
            if self.num_hard_negatives > bank.shape[0]:
                raise ValueError(
                    f"num_hard_negatives={self.num_hard_negatives} exceeds the {bank.shape[0]} images of "
                    f"hard_negative_bank[{index}]."
                )
            _check_finite(bank, f"hard_negative_bank[{index}]", "recompute it with the retriever's encode_images")
            bank = torch.nn.functional.normalize(bank.detach().float(), dim=-1)
            self.register_buffer(f"hard_negative_bank_{index}", bank, persistent=False)
        self.hard_negative_banks = [f"hard_negative_bank_{index}" for index in range(len(banks))]

    @property
    def retriever(self) -> Retriever:
        """The first (or only) retriever."""
        return self.retrievers[0]

    @property
    def active_retriever(self) -> Retriever | None:
        """While `compute_rewards` runs: the retriever that produced its `logits`; otherwise `None`."""
        return None if self._active_index is None else self.retrievers[self._active_index]

    @property
    def is_multi_retriever(self) -> bool:
        """Whether image inputs are lists with one entry per retriever."""
        return len(self.retrievers) > 1

    def preprocess(self, images: list[Image.Image]) -> ImageInputs:
        """PIL images to retriever pixels: what the retriever's `preprocess` returns (a tensor, or a `BatchFeature`
        for SigLIP2), or one such per retriever when there are several."""
        pixel_values = [retriever.preprocess(images) for retriever in self.retrievers]
        return pixel_values if self.is_multi_retriever else pixel_values[0]

    @torch.no_grad()
    def encode_images(self, pixel_values: ImageInputs) -> torch.Tensor | list[torch.Tensor]:
        """Retriever pixels (as `preprocess` returns them) to L2-normalised `[N, D]` embeddings, to cache and pass
        back as `forward(image_embeds=...)`; a list with one entry per retriever when there are several."""
        pixel_values = self._per_retriever(pixel_values, "pixel_values")
        embeds = [retriever.encode_images(pixels) for retriever, pixels in zip(self.retrievers, pixel_values)]
        return embeds if self.is_multi_retriever else embeds[0]

    def active_retriever_indices(self, step: int | None = None) -> list[int]:
        """Indices of the retrievers a call at `step` uses: all with `"mean"`, one with `"alternate"`."""
        if self.multi_retriever == "mean" or not self.is_multi_retriever:
            return list(range(len(self.retrievers)))
        step = self._num_calls if step is None else step
        return [step % len(self.retrievers)]

    @torch.no_grad()
    def forward(
        self,
        captions: list[str],
        pixel_values: ImageInputs | None = None,
        image_embeds: ImageInputs | None = None,
        target_indices: torch.LongTensor | None = None,
        target_bank_indices: torch.LongTensor | None = None,
        step: int | None = None,
        pool_size: int | None = None,
        processes_per_pool: int | None = None,
    ) -> RewardOutput:
        """Reward `B` captions of this process's `num_images` images.

        Args:
            captions: `B` generated captions; `B == G * num_images` with the `G` captions of an image consecutive,
                unless `target_indices` is given. Captions longer than the retriever's context are truncated.
            pixel_values: `[num_images, C, H, W]` (or a retriever's `BatchFeature`) from `self.preprocess` (one per
                retriever if several).
            image_embeds: `[num_images, D]` from `self.encode_images`, instead of `pixel_values`.
            target_indices: `[B]` index of each caption's image among this process's images.
            target_bank_indices: `[num_images]` row of each image in `hard_negative_bank` (`-1` if absent), so
                mining never returns the target itself even when its bank embedding differs slightly.
            step: training step for `multi_retriever="alternate"`; defaults to the number of successful calls so far.
            pool_size: split the candidate images into pools of this many consecutive images (see
                `discritune_trl.rewards.pools.pool_bounds`) and score each caption against its pool only; `None`:
                one pool of all candidate images.
            processes_per_pool: the candidate images are those of this many consecutive processes, this one
                included (1: this process's only, no gather); defaults to all processes when
                `gather_across_processes`, else 1. Must divide the number of processes.

        Returns:
            `RewardOutput` with `rewards`, `logits`, `accuracy`, `target_indices` (columns in `logits`) and
            `pool_sizes`.
        """
        captions = _check_captions(captions)
        processes_per_pool = self._processes_per_pool(processes_per_pool)
        if pool_size is not None and pool_size < 1:
            raise ValueError(f"pool_size={pool_size} must be >= 1 (or None for one pool of all images).")
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of pixel_values (from reward_model.preprocess) or image_embeds.")
        images = self._per_retriever(image_embeds if pixel_values is None else pixel_values, "images")
        active = self.active_retriever_indices(step)

        outputs = []
        for index in active:
            retriever = self.retrievers[index]
            if pixel_values is not None:
                local_embeds = retriever.encode_images(images[index])  # [n, D]
                _check_finite(local_embeds, f"{type(retriever).__name__}.encode_images output", "fix the retriever")
            else:
                local_embeds = images[index]
                _check_finite(local_embeds, "image_embeds", "recompute them with reward_model.encode_images")
            outputs.append(
                self._score(
                    index, captions, local_embeds, target_indices, target_bank_indices, pool_size, processes_per_pool
                )
            )
        self._num_calls += 1  # only a call that succeeded moves the "alternate" rotation on
        if len(outputs) == 1:
            return outputs[0]
        return RewardOutput(
            rewards=torch.stack([output.rewards for output in outputs]).mean(0),
            logits=torch.stack([output.logits for output in outputs]).mean(0),
            accuracy=torch.stack([output.accuracy for output in outputs]).mean(0),
            target_indices=outputs[0].target_indices,
            pool_sizes=outputs[0].pool_sizes,
        )

    def _processes_per_pool(self, processes_per_pool: int | None) -> int:
        _, world_size = process_rank_and_count()
        if processes_per_pool is None:
            return world_size if self.gather_across_processes else 1
        if processes_per_pool > 1 and not self.gather_across_processes:
            raise ValueError(
                f"processes_per_pool={processes_per_pool} gathers images across processes, but this reward model "
                "was built with gather_across_processes=False; build it with gather_across_processes=True or use "
                "processes_per_pool=1."
            )
        if processes_per_pool < 1 or world_size % processes_per_pool:
            raise ValueError(
                f"processes_per_pool={processes_per_pool} must be >= 1 and divide the {world_size} process(es)."
            )
        return processes_per_pool

    def _score(
        self,
        retriever_index: int,
        captions: list[str],
        local_image_embeds: torch.Tensor,
        target_indices: torch.LongTensor | None,
        target_bank_indices: torch.LongTensor | None,
        pool_size: int | None,
        processes_per_pool: int,
    ) -> RewardOutput:
        retriever = self.retrievers[retriever_index]
        if local_image_embeds.ndim != 2:
            raise ValueError(f"Image embeddings have shape {tuple(local_image_embeds.shape)}, expected [N, D].")
        text_embeds = retriever.encode_texts(captions).float()  # [B, D]
        _check_finite(text_embeds, f"{type(retriever).__name__}.encode_texts output", "fix the retriever")
        device = text_embeds.device
        local_image_embeds = local_image_embeds.to(device=device, dtype=torch.float32)  # [n, D]
        if text_embeds.shape[1] != local_image_embeds.shape[1]:
            raise ValueError(
                f"{type(retriever).__name__} gives {text_embeds.shape[1]}-d text but {local_image_embeds.shape[1]}-d "
                "image embeddings; were image_embeds computed by another retriever?"
            )
        local_targets = _local_targets(len(captions), local_image_embeds.shape[0], target_indices, device)  # [B]

        candidate_embeds, offset = _pool_group_rows(local_image_embeds, processes_per_pool)  # [N, D]
        bounds = pool_bounds(candidate_embeds.shape[0], pool_size)
        smallest_pool = min(end - start for start, end in bounds)
        if smallest_pool == 1 and self.num_hard_negatives == 0 and self.reward_type != "cosine":
            raise ValueError(
                "A candidate pool holds a single image and there are no hard negatives: there is no distractor to "
                "discriminate against. Use pools of >= 2 images (per_device_train_batch_size and pool_size >= 2, or "
                "several processes) or set num_hard_negatives with a hard_negative_bank."
            )
        targets = local_targets + offset  # [B] rows of `candidate_embeds`
        logit_scale = retriever.logit_scale.to(device=device, dtype=torch.float32)
        if len(bounds) == 1:
            logits = logit_scale * text_embeds @ candidate_embeds.T  # [B, N]
            pool_sizes = [candidate_embeds.shape[0]]
        else:  # each caption against its own pool: [B, largest pool], -inf after the end of a smaller pool
            starts = torch.tensor([start for start, _ in bounds], device=device)
            pool_of_caption = torch.bucketize(targets, starts, right=True) - 1  # [B]
            logits = text_embeds.new_full((len(captions), max(end - start for start, end in bounds)), float("-inf"))
            pool_sizes = []
            for pool, (start, end) in enumerate(bounds):
                rows = pool_of_caption == pool
                if rows.any():
                    logits[rows, : end - start] = logit_scale * text_embeds[rows] @ candidate_embeds[start:end].T
                    pool_sizes.append(end - start)
            targets = targets - starts[pool_of_caption]
        if self.num_hard_negatives > 0:
            hard_logits = self._hard_negative_logits(
                retriever_index, text_embeds, local_image_embeds, local_targets, target_bank_indices
            )
            logits = torch.cat([logits, logit_scale * hard_logits], dim=1)  # [B, N + k]

        self._active_index = retriever_index
        try:
            rewards = self.compute_rewards(logits, targets)
        finally:
            self._active_index = None
        return RewardOutput(
            rewards=rewards,
            logits=logits,
            accuracy=retrieval_accuracy(logits, targets),
            target_indices=targets,
            pool_sizes=torch.tensor(pool_sizes, dtype=torch.long, device=device),
        )

    def _hard_negative_logits(
        self,
        retriever_index: int,
        text_embeds: torch.Tensor,
        local_image_embeds: torch.Tensor,
        local_targets: torch.LongTensor,
        target_bank_indices: torch.LongTensor | None,
    ) -> torch.Tensor:
        """`[B, k]` cosines of each caption with its target's mined neighbours (`-inf` where none was left)."""
        bank = getattr(self, self.hard_negative_banks[retriever_index])  # [M, D]
        if target_bank_indices is not None and len(target_bank_indices) != local_image_embeds.shape[0]:
            raise ValueError(
                f"target_bank_indices has {len(target_bank_indices)} entries for {local_image_embeds.shape[0]} images."
            )
        neighbours, valid = mine_hard_negatives(
            local_image_embeds,
            bank.to(text_embeds.device),
            self.num_hard_negatives,
            self.similarity_ceiling,
            exclude_indices=target_bank_indices,
        )  # [n, k] each
        neighbour_embeds = bank.to(text_embeds.device)[neighbours[local_targets]]  # [B, k, D]
        cosines = torch.einsum("bd,bkd->bk", text_embeds, neighbour_embeds)  # [B, k]
        return cosines.masked_fill(~valid[local_targets], float("-inf"))

    def compute_rewards(self, logits: torch.Tensor, target_indices: torch.LongTensor) -> torch.Tensor:
        """Turn retrieval logits into one reward per caption. Override this for a new reward.

        Args:
            logits: `[B, N]` `logit_scale * cosine` of each caption with each candidate image.
            target_indices: `[B]` column of each caption's target image.

        Returns:
            `[B]` rewards. While this runs, `self.active_retriever` is the retriever that produced `logits`
            (its `logit_scale` turns logits back into cosines).
        """
        if self.reward_type == "log_prob":
            return logits.log_softmax(dim=-1).gather(1, target_indices[:, None]).squeeze(1)
        if self.reward_type == "accuracy":
            return retrieval_accuracy(logits, target_indices)
        if self.reward_type == "cosine":
            target_logits = logits.gather(1, target_indices[:, None]).squeeze(1)
            return target_logits / self.active_retriever.logit_scale.to(logits.device)
        raise ValueError(f"reward_type={self.reward_type!r} is not one of {REWARD_TYPES}.")

    def _per_retriever(self, inputs: ImageInputs, name: str) -> list[torch.Tensor | Mapping[str, torch.Tensor]]:
        if isinstance(inputs, (torch.Tensor, Mapping)):  # one retriever's input (a mapping: SigLIP2's BatchFeature)
            if self.is_multi_retriever:
                raise ValueError(
                    f"With {len(self.retrievers)} retrievers, pass {name} as a list with one tensor per retriever "
                    "(what reward_model.preprocess / reward_model.encode_images return)."
                )
            return [inputs]
        inputs = list(inputs)
        if len(inputs) != len(self.retrievers):
            raise ValueError(f"Got {len(inputs)} {name} tensors for {len(self.retrievers)} retrievers.")
        return inputs


def retrieval_accuracy(logits: torch.Tensor, target_indices: torch.LongTensor) -> torch.Tensor:
    """`[B]` 1.0 where the target's logit is strictly above every other candidate's (the paper's criterion)."""
    target_logits = logits.gather(1, target_indices[:, None])  # [B, 1]
    others = logits.scatter(1, target_indices[:, None], float("-inf"))  # [B, N]
    return (target_logits.squeeze(1) > others.max(dim=1).values).float()


def _check_captions(captions: list[str]) -> list[str]:
    if isinstance(captions, str) or not isinstance(captions, Sequence):
        raise TypeError(f"captions must be a list of strings, got {type(captions).__name__}.")
    for index, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise TypeError(f"captions[{index}] is a {type(caption).__name__}, expected str (decode token ids first).")
    if not captions:
        raise ValueError("captions is empty; pass at least one caption.")
    return list(captions)


def _local_targets(
    num_captions: int, num_images: int, target_indices: torch.LongTensor | None, device: torch.device
) -> torch.LongTensor:
    """`[B]` index of each caption's image among this process's images."""
    if target_indices is not None:
        target_indices = torch.as_tensor(target_indices, dtype=torch.long, device=device)
        if target_indices.shape != (num_captions,):
            raise ValueError(f"target_indices has shape {tuple(target_indices.shape)}, expected [{num_captions}].")
        if num_captions and (target_indices.min() < 0 or target_indices.max() >= num_images):
            raise ValueError(f"target_indices must lie in [0, {num_images}) for {num_images} images.")
        return target_indices
    if num_images == 0 or num_captions % num_images != 0:
        raise ValueError(
            f"Got {num_captions} captions for {num_images} images: pass one caption per image, or G captions per "
            "image (the G captions of an image consecutive, len(captions) == G * num_images), or target_indices."
        )
    captions_per_image = num_captions // num_images
    return torch.arange(num_images, device=device).repeat_interleave(captions_per_image)


def _pool_group_rows(local_rows: torch.Tensor, processes_per_pool: int) -> tuple[torch.Tensor, int]:
    """The rows of this process's group of `processes_per_pool` consecutive processes, and the offset of this
    process's rows among them; no communication when the group is this process alone."""
    rank, world_size = process_rank_and_count()
    if processes_per_pool == 1 or world_size == 1:
        return local_rows, 0
    parts = gather_rows_by_process(local_rows)  # every process's rows, sizes may differ
    first = rank // processes_per_pool * processes_per_pool
    group = parts[first : first + processes_per_pool]
    return torch.cat(group), sum(part.shape[0] for part in parts[first:rank])


def _check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    if not torch.isfinite(tensor).all():
        rows = torch.nonzero(~torch.isfinite(tensor).reshape(tensor.shape[0], -1).all(dim=1)).flatten().tolist()
        raise ValueError(f"{what} contains NaN or inf (rows {rows[:10]}); {fix}.")
