"""Text-to-image retrieval metrics: P@1 against random candidates (the paper's Table 1) and recall@k.

Captions and images are paired by row: caption `i` describes image `targets[i]` (by default image `i`).
Scores are dot products of the embeddings, i.e. cosines for the L2-normalised embeddings a `Retriever`
returns; the retriever's `logit_scale` does not change a ranking and is not used.

Ties count against the caption: a caption retrieves its target only if the target scores *strictly*
higher than every other candidate. An empty caption, whose embedding matches all images alike, therefore
never counts as a hit by luck.

A gallery with fewer images than the candidate count asked for is handled the same way everywhere (here,
`retrieval_metrics` / `evaluate_captions`, `DiscriTuneTrainer.evaluate` and `discritune-trl evaluate`): one warning
naming both counts, and P@1 among all the gallery's images, the count used being the `num_candidates` reported.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import datasets
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..retrievers.base import Retriever
from ..utils.images import image_batches


logger = logging.getLogger(__name__)


# Rows of the [rows, N] score matrix handled at once, so a 10k-image gallery never needs a 10k x 10k matrix.
_ROW_CHUNK = 512


def _check_embeddings(
    text_embeds: torch.Tensor, image_embeds: torch.Tensor, targets: torch.Tensor | None
) -> torch.Tensor:
    """Validate shapes and return `targets` as a `[T]` long tensor (default: caption `i` -> image `i`)."""
    if text_embeds.dim() != 2 or image_embeds.dim() != 2:
        raise ValueError(
            f"text_embeds and image_embeds must be 2-D [num, dim]; got shapes {tuple(text_embeds.shape)} and "
            f"{tuple(image_embeds.shape)}."
        )
    if text_embeds.shape[1] != image_embeds.shape[1]:
        raise ValueError(
            f"text_embeds has dim {text_embeds.shape[1]} but image_embeds has dim {image_embeds.shape[1]}; "
            "encode both with the same retriever."
        )
    for name, embeds in (("text_embeds", text_embeds), ("image_embeds", image_embeds)):
        bad_rows = (~torch.isfinite(embeds)).any(dim=1).nonzero().flatten().tolist()
        if bad_rows:
            raise ValueError(
                f"{name} holds non-finite values (NaN or inf) in {len(bad_rows)} row(s), e.g. rows {bad_rows[:5]}: "
                "a ranking with them would be meaningless. Check those captions or images (and the retriever's "
                "precision)."
            )
    num_texts, num_images = text_embeds.shape[0], image_embeds.shape[0]
    if targets is None:
        if num_texts != num_images:
            raise ValueError(
                f"{num_texts} captions but {num_images} images: pass `targets` (the image index of each "
                "caption) when captions and images are not paired one to one."
            )
        return torch.arange(num_texts, device=text_embeds.device)
    targets = torch.as_tensor(targets, dtype=torch.long, device=text_embeds.device)
    if targets.shape != (num_texts,):
        raise ValueError(
            f"targets must have shape [{num_texts}] (one image index per caption), got {tuple(targets.shape)}."
        )
    if num_texts and (targets.min() < 0 or targets.max() >= num_images):
        raise ValueError(
            f"targets must be image indices in [0, {num_images}), got values in [{targets.min()}, {targets.max()}]."
        )
    return targets


def _row_chunks(num_rows: int):
    for start in range(0, num_rows, _ROW_CHUNK):
        yield slice(start, min(start + _ROW_CHUNK, num_rows))


def usable_num_candidates(
    num_candidates: int, num_images: int, name: str = "num_candidates", where: str | None = None
) -> int:
    """The candidate count P@1 can use on a gallery of `num_images`: `num_candidates`, or all `num_images` (with one
    warning naming both counts) when the gallery holds fewer.

    Args:
        num_candidates: the count asked for (target + distractors).
        num_images: the gallery's size.
        name: the setting's name, for the messages (`"eval_num_candidates"` in the trainer).
        where: which evaluation set, for the warning (e.g. `"eval_shifted"`).

    Raises:
        ValueError: `num_candidates < 2`, or a gallery of fewer than 2 images: no distractor at all.
    """
    if num_candidates < 2:
        raise ValueError(f"{name}={num_candidates} leaves no distractor; use {name} >= 2.")
    if num_images < 2:
        raise ValueError(
            f"The gallery{f' of {where}' if where else ''} has {num_images} image(s): P@1 needs at least 2 (a target "
            "and a distractor). Evaluate on more images."
        )
    if num_candidates <= num_images:
        return num_candidates
    logger.warning(
        "%s%d images, fewer than %s=%d: P@1 uses all %d images as candidates (num_candidates=%d is reported). "
        "Evaluate on at least %d images for %d candidates.",
        f"{where}: " if where else "",
        num_images,
        name,
        num_candidates,
        num_images,
        num_images,
        num_candidates,
        num_candidates,
    )
    return num_images


def precision_at_1(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    num_candidates: int = 100,
    seed: int = 0,
    targets: torch.Tensor | None = None,
) -> float:
    """Fraction of captions whose target image wins among `num_candidates` candidates (Table 1's protocol).

    For every caption, `num_candidates - 1` distractors are drawn uniformly without replacement from the
    *other* images of the gallery, with a generator seeded by `seed`, so the same inputs always give the
    same candidate sets.

    Args:
        text_embeds (`torch.Tensor` of shape `[T, D]`): caption embeddings.
        image_embeds (`torch.Tensor` of shape `[N, D]`): gallery image embeddings.
        num_candidates (`int`, defaults to `100`): target + distractors per caption (the paper uses 100); a
            gallery of fewer images uses all of them, with a warning (see `usable_num_candidates`).
        seed (`int`, defaults to `0`): seed for drawing the distractors.
        targets (`torch.Tensor` of shape `[T]`, *optional*): image index of each caption; defaults to
            `arange(T)` (requires `T == N`).

    Returns:
        `float` in `[0, 1]`; ties with a distractor count as misses.
    """
    targets = _check_embeddings(text_embeds, image_embeds, targets)
    num_candidates = usable_num_candidates(num_candidates, image_embeds.shape[0])
    if text_embeds.shape[0] == 0:
        raise ValueError("precision_at_1 got no captions (text_embeds has 0 rows).")

    generator = torch.Generator().manual_seed(seed)
    text_embeds, image_embeds = text_embeds.float().cpu(), image_embeds.float().cpu()
    targets = targets.cpu()
    hits = 0
    for rows in _row_chunks(text_embeds.shape[0]):
        row_targets = targets[rows]  # [R]
        row_index = torch.arange(row_targets.shape[0])
        scores = text_embeds[rows] @ image_embeds.T  # [R, N]
        # Random keys with the target's key above 1, so the smallest `num_candidates - 1` keys are a uniform
        # draw of distractors among the other images.
        keys = torch.rand(scores.shape, generator=generator)  # [R, N]
        keys[row_index, row_targets] = 2.0
        distractors = keys.topk(num_candidates - 1, dim=1, largest=False).indices  # [R, K - 1]
        target_scores = scores[row_index, row_targets]  # [R]
        best_distractor = scores.gather(1, distractors).max(dim=1).values  # [R]
        hits += int((target_scores > best_distractor).sum())
    return hits / text_embeds.shape[0]


def recall_at_k(
    text_embeds: torch.Tensor,
    image_embeds: torch.Tensor,
    ks: Sequence[int] = (1, 5, 10),
    targets: torch.Tensor | None = None,
) -> dict[str, float]:
    """Text-to-image recall@k over the whole gallery.

    A caption's rank is 1 + the number of *other* images scoring at least as high as its target (ties
    count against it); recall@k is the fraction of captions with rank <= k.

    Args:
        text_embeds (`torch.Tensor` of shape `[T, D]`): caption embeddings.
        image_embeds (`torch.Tensor` of shape `[N, D]`): gallery image embeddings.
        ks (`Sequence[int]`, defaults to `(1, 5, 10)`): cut-offs, each in `[1, N]`.
        targets (`torch.Tensor` of shape `[T]`, *optional*): image index of each caption; defaults to
            `arange(T)` (requires `T == N`).

    Returns:
        `{"recall_at_1": ..., "recall_at_5": ..., ...}` with values in `[0, 1]`.
    """
    targets = _check_embeddings(text_embeds, image_embeds, targets)
    num_images = image_embeds.shape[0]
    bad = [k for k in ks if not 1 <= k <= num_images]
    if bad:
        raise ValueError(f"ks={tuple(ks)} has cut-offs {bad} outside [1, {num_images}] (the gallery size); drop them.")
    if text_embeds.shape[0] == 0:
        raise ValueError("recall_at_k got no captions (text_embeds has 0 rows).")

    text_embeds, image_embeds, targets = text_embeds.float().cpu(), image_embeds.float().cpu(), targets.cpu()
    ranks = []
    for rows in _row_chunks(text_embeds.shape[0]):
        row_targets = targets[rows]
        scores = text_embeds[rows] @ image_embeds.T  # [R, N]
        target_scores = scores[torch.arange(row_targets.shape[0]), row_targets]  # [R]
        # The target itself always satisfies `>=`, so this count is already 1 + (other images at least as high).
        ranks.append((scores >= target_scores[:, None]).sum(dim=1))  # [R]
    ranks = torch.cat(ranks)  # [T]
    return {f"recall_at_{k}": float((ranks <= k).float().mean()) for k in ks}


def _retriever_device(retriever: Retriever) -> torch.device:
    parameter = next(retriever.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def encode_captions(
    retriever: Retriever, captions: Sequence[str], batch_size: int = 256, disable_tqdm: bool = False
) -> torch.Tensor:
    """Embed captions with `retriever.encode_texts`, `batch_size` at a time, with a progress bar (unless
    `disable_tqdm`); returns `[T, D]` on CPU."""
    embeds = []
    with tqdm(total=len(captions), desc="Encoding captions", unit="caption", disable=disable_tqdm) as progress:
        for start in range(0, len(captions), batch_size):
            batch = list(captions[start : start + batch_size])
            embeds.append(retriever.encode_texts(batch).float().cpu())
            progress.update(len(batch))
    return torch.cat(embeds) if embeds else torch.empty(0, 0)


@torch.no_grad()
def encode_gallery(
    retriever: Retriever,
    images: Sequence[Image.Image] | datasets.Dataset,
    batch_size: int = 64,
    image_column: str = "image",
    disable_tqdm: bool = False,
) -> torch.Tensor:
    """Embed images with `retriever.preprocess` + `encode_images`, `batch_size` at a time, with a progress bar
    (unless `disable_tqdm`); `[N, D]` on CPU.

    `images` is a sequence of PIL images or a `datasets.Dataset`, read a batch at a time from `image_column`.
    """
    device = _retriever_device(retriever)
    embeds = []
    with tqdm(total=len(images), desc="Encoding the gallery", unit="img", disable=disable_tqdm) as progress:
        for batch in image_batches(images, batch_size, image_column):
            pixel_values = retriever.preprocess(batch).to(device)
            embeds.append(retriever.encode_images(pixel_values).float().cpu())
            progress.update(len(batch))
    return torch.cat(embeds) if embeds else torch.empty(0, 0)


def retrieval_metrics(
    retriever: Retriever,
    captions: Sequence[str],
    images: Sequence[Image.Image] | None = None,
    image_embeds: torch.Tensor | None = None,
    num_candidates: int = 100,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    targets: torch.Tensor | None = None,
    batch_size: int = 64,
    disable_tqdm: bool = False,
) -> dict[str, float | int]:
    """P@1 with `num_candidates` candidates and recall@k for captions read by any `Retriever`.

    Works for generated captions, reference captions or any strings. Empty captions are scored like any
    other (they almost never retrieve their image) and counted in `num_empty_captions`.

    Args:
        retriever (`Retriever`): the judge; only `preprocess`, `encode_images` and `encode_texts` are used.
        captions (`Sequence[str]`): one caption per row; caption `i` describes image `targets[i]`.
        images (`Sequence[PIL.Image.Image]`, *optional*): the gallery. Give this or `image_embeds`.
        image_embeds (`torch.Tensor` of shape `[N, D]`, *optional*): a gallery already encoded by `retriever`.
        num_candidates (`int`, defaults to `100`): candidates per caption for P@1; a gallery of fewer images uses
            all of them, with a warning, and the count used is the `num_candidates` returned.
        seed (`int`, defaults to `0`): seed for drawing P@1 distractors.
        ks (`Sequence[int]`, defaults to `(1, 5, 10)`): recall cut-offs.
        targets (`torch.Tensor` of shape `[T]`, *optional*): image index of each caption; defaults to row `i`.
        batch_size (`int`, defaults to `64`): images (and 4x as many captions) encoded per forward pass.
        disable_tqdm (`bool`, defaults to `False`): no progress bars while encoding.

    Returns:
        `dict` with `precision_at_1`, `recall_at_{k}` (fractions in `[0, 1]`), `num_candidates`,
        `num_captions` and `num_empty_captions`.
    """
    if (images is None) == (image_embeds is None):
        raise ValueError("Pass exactly one of `images` (PIL images) or `image_embeds` (already encoded).")
    if isinstance(captions, str):
        raise TypeError("captions must be a list of strings, got a single string; wrap it in a list.")
    if len(captions) == 0:
        raise ValueError("captions is empty; pass one caption per image to evaluate.")
    if image_embeds is None:
        image_embeds = encode_gallery(retriever, images, batch_size=batch_size, disable_tqdm=disable_tqdm)
    text_embeds = encode_captions(retriever, captions, batch_size=4 * batch_size, disable_tqdm=disable_tqdm)
    num_candidates = usable_num_candidates(num_candidates, image_embeds.shape[0])
    metrics: dict[str, float | int] = {
        "precision_at_1": precision_at_1(text_embeds, image_embeds, num_candidates, seed, targets=targets),
        **recall_at_k(text_embeds, image_embeds, ks, targets=targets),
        "num_candidates": num_candidates,
        "num_captions": len(captions),
        "num_empty_captions": sum(not caption.strip() for caption in captions),
    }
    return metrics
