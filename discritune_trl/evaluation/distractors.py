"""Hard-distractor sets (the paper's Appendix A) and the ImageCoDe-style 10-candidate evaluation (Table 11).

A set is a target image plus its nearest visual neighbours by retriever image-embedding cosine, skipping
near-duplicates (cosine above `max_similarity`, 0.8 in the paper) and any image already placed in an
earlier set, so no image appears twice across sets.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import torch

from ..retrievers.base import Retriever
from .retrieval import encode_captions


def build_hard_distractor_sets(
    image_embeds: torch.Tensor,
    num_distractors: int = 9,
    max_similarity: float = 0.8,
    num_sets: int | None = None,
    shuffle_targets: bool = False,
    seed: int = 0,
) -> datasets.Dataset:
    """Group images into sets of one target and its `num_distractors` nearest neighbours.

    Targets are visited in dataset order (or a seeded random order with `shuffle_targets=True`). For each
    image not yet used, its neighbours are ranked by cosine; neighbours above `max_similarity` (near
    duplicates) and images already used are skipped, and the `num_distractors` most similar remaining ones
    become its distractors. A target without enough eligible neighbours gets no set (it may still serve as
    a distractor later). Within a set the candidates are shuffled with `seed`.

    Args:
        image_embeds (`torch.Tensor` of shape `[N, D]`): retriever image embeddings (normalised here).
        num_distractors (`int`, defaults to `9`): distractors per set (the paper's sets have 10 images).
        max_similarity (`float`, defaults to `0.8`): cosine ceiling for a distractor.
        num_sets (`int`, *optional*): stop after this many sets (the paper collected 500).
        shuffle_targets (`bool`, defaults to `False`): visit targets in a random order instead of dataset order.
        seed (`int`, defaults to `0`): seed for the target order and the candidate order.

    Returns:
        `datasets.Dataset` with one row per set: `set_id`, `target_index` and `distractor_indices` (row indices
        into the images that `image_embeds` came from, distractors most similar first), `distractor_similarities`,
        `candidate_indices` (target and distractors, shuffled) and `target_position` (the target's place in
        `candidate_indices`).
    """
    if image_embeds.dim() != 2:
        raise ValueError(f"image_embeds must be [N, D], got shape {tuple(image_embeds.shape)}.")
    if num_distractors < 1:
        raise ValueError(f"num_distractors={num_distractors}: a set needs at least one distractor.")
    if not -1.0 <= max_similarity <= 1.0:
        raise ValueError(f"max_similarity={max_similarity} is not a cosine in [-1, 1].")
    num_images = image_embeds.shape[0]
    if num_images < num_distractors + 1:
        raise ValueError(
            f"{num_images} images cannot make a set of 1 target + {num_distractors} distractors; "
            f"use num_distractors <= {num_images - 1}."
        )

    embeds = torch.nn.functional.normalize(image_embeds.float().cpu(), dim=1)  # [N, D]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_images, generator=generator) if shuffle_targets else torch.arange(num_images)
    used = torch.zeros(num_images, dtype=torch.bool)
    rows = {key: [] for key in ("target_index", "distractor_indices", "distractor_similarities")}
    rows.update(candidate_indices=[], target_position=[])
    for target in order.tolist():
        if used[target]:
            continue
        similarities = embeds @ embeds[target]  # [N]
        eligible = ~used & (similarities <= max_similarity)
        eligible[target] = False
        if int(eligible.sum()) < num_distractors:
            continue
        masked = similarities.masked_fill(~eligible, float("-inf"))
        top = masked.topk(num_distractors)  # most similar eligible neighbours first
        distractors = top.indices
        used[target] = True
        used[distractors] = True

        candidates = torch.cat([torch.tensor([target]), distractors])  # [1 + K]
        permutation = torch.randperm(len(candidates), generator=generator)
        rows["target_index"].append(target)
        rows["distractor_indices"].append(distractors.tolist())
        rows["distractor_similarities"].append(top.values.tolist())
        rows["candidate_indices"].append(candidates[permutation].tolist())
        rows["target_position"].append(int((permutation == 0).nonzero()))
        if num_sets is not None and len(rows["target_index"]) >= num_sets:
            break
    rows["set_id"] = list(range(len(rows["target_index"])))
    features = datasets.Features(
        {
            "set_id": datasets.Value("int64"),
            "target_index": datasets.Value("int64"),
            "distractor_indices": datasets.Sequence(datasets.Value("int64")),
            "distractor_similarities": datasets.Sequence(datasets.Value("float32")),
            "candidate_indices": datasets.Sequence(datasets.Value("int64")),
            "target_position": datasets.Value("int64"),
        }
    )
    return datasets.Dataset.from_dict({name: rows[name] for name in features}, features=features)


def candidate_set_accuracy(
    text_embeds: torch.Tensor, candidate_embeds: torch.Tensor, target_positions: torch.Tensor
) -> float:
    """Fraction of sets where the caption scores its target strictly above every other candidate.

    Args:
        text_embeds (`torch.Tensor` of shape `[S, D]`): one caption embedding per set.
        candidate_embeds (`torch.Tensor` of shape `[S, C, D]`): the candidate image embeddings of each set.
        target_positions (`torch.Tensor` of shape `[S]`): index of the target among the `C` candidates.
    """
    if candidate_embeds.dim() != 3 or candidate_embeds.shape[0] != text_embeds.shape[0]:
        raise ValueError(
            f"candidate_embeds must be [S, C, D] with S = {text_embeds.shape[0]} sets, got {tuple(candidate_embeds.shape)}."
        )
    if text_embeds.shape[0] == 0:
        raise ValueError("candidate_set_accuracy got no sets.")
    target_positions = torch.as_tensor(target_positions, dtype=torch.long)
    scores = torch.einsum("sd,scd->sc", text_embeds.float(), candidate_embeds.float())  # [S, C]
    target_scores = scores.gather(1, target_positions[:, None])  # [S, 1]
    # The target always ties with itself; a hit is a target that no other candidate reaches.
    hits = (scores >= target_scores).sum(dim=1) == 1  # [S]
    return float(hits.float().mean())


def hard_distractor_accuracy(
    retriever: Retriever,
    captions: Sequence[str],
    sets: datasets.Dataset,
    image_embeds: torch.Tensor,
    batch_size: int = 256,
    disable_tqdm: bool = False,
) -> dict[str, float | int]:
    """ImageCoDe-style evaluation (Table 11): retrieve each set's target among its candidates from a caption.

    Args:
        retriever (`Retriever`): encodes the captions (the images are already encoded in `image_embeds`).
        captions (`Sequence[str]`): one caption per row of `sets`, describing that set's target.
        sets (`datasets.Dataset`): sets from `build_hard_distractor_sets` (columns `candidate_indices`,
            `target_position`).
        image_embeds (`torch.Tensor` of shape `[N, D]`): `retriever` embeddings of the images the sets index.
        batch_size (`int`, defaults to `256`): captions encoded per forward pass.
        disable_tqdm (`bool`, defaults to `False`): no progress bar while encoding the captions.

    Returns:
        `{"imagecode_accuracy": fraction, "num_sets": S, "num_candidates": C, "num_empty_captions": E}`.
    """
    if len(captions) != len(sets):
        raise ValueError(f"{len(captions)} captions for {len(sets)} sets; pass the caption of each set's target.")
    if len(sets) == 0:
        raise ValueError("hard_distractor_accuracy got no sets.")
    candidate_indices = torch.tensor(sets["candidate_indices"], dtype=torch.long)  # [S, C]
    if int(candidate_indices.max()) >= image_embeds.shape[0]:
        raise ValueError(
            f"sets index image {int(candidate_indices.max())} but image_embeds has {image_embeds.shape[0]} rows; "
            "encode the same images the sets were built from."
        )
    text_embeds = encode_captions(retriever, captions, batch_size=batch_size, disable_tqdm=disable_tqdm)  # [S, D]
    accuracy = candidate_set_accuracy(
        text_embeds, image_embeds.float().cpu()[candidate_indices], torch.tensor(sets["target_position"])
    )
    return {
        "imagecode_accuracy": accuracy,
        "num_sets": len(sets),
        "num_candidates": candidate_indices.shape[1],
        "num_empty_captions": sum(not caption.strip() for caption in captions),
    }
