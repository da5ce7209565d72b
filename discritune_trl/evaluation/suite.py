"""Caption a dataset with any `CaptioningPolicy` and compute every metric of the paper on the captions."""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import torch
from PIL import Image
from tqdm.auto import tqdm

from ..models.policy import CaptioningPolicy
from ..retrievers.base import Retriever
from ..utils.images import image_batches
from .captioning import CAPTION_METRICS, caption_metrics
from .distractors import hard_distractor_accuracy
from .retrieval import retrieval_metrics


def _policy_device(policy: CaptioningPolicy) -> torch.device:
    parameters = getattr(policy, "parameters", None)
    parameter = next(parameters(), None) if parameters is not None else None
    return parameter.device if parameter is not None else torch.device("cpu")


@torch.no_grad()
def caption_images(
    policy: CaptioningPolicy,
    images: Sequence[Image.Image] | datasets.Dataset,
    batch_size: int = 16,
    num_beams: int = 5,
    max_new_tokens: int = 40,
    image_column: str = "image",
    disable_tqdm: bool = False,
) -> list[str]:
    """Caption images with a policy's own decoding: beam search with 5 beams by default (the paper's test setup), with
    a progress bar.

    Args:
        policy (`CaptioningPolicy`): any captioner implementing `preprocess` and `generate_captions`.
        images (`Sequence[PIL.Image.Image]` or `datasets.Dataset`): a dataset is read `batch_size` rows at a
            time from `image_column`.
        batch_size (`int`, defaults to `16`): images per `generate_captions` call.
        num_beams (`int`, defaults to `5`): beams (1 is greedy decoding).
        max_new_tokens (`int`, defaults to `40`): the paper's cap; captions also stop at the first full stop.
        image_column (`str`, defaults to `"image"`): the image column when `images` is a dataset.
        disable_tqdm (`bool`, defaults to `False`): no progress bar.

    Returns:
        One caption per image, in order.
    """
    device = _policy_device(policy)
    captions: list[str] = []
    with tqdm(total=len(images), desc="Captioning", unit="img", disable=disable_tqdm) as progress:
        for batch in image_batches(images, batch_size, image_column):
            pixel_values = policy.preprocess(batch).to(device)
            output = policy.generate_captions(
                pixel_values=pixel_values, num_beams=num_beams, max_new_tokens=max_new_tokens
            )
            captions.extend(output.texts)
            progress.update(len(batch))
    return captions


def evaluate_captions(
    captions: Sequence[str],
    retriever: Retriever,
    image_embeds: torch.Tensor,
    references: Sequence[Sequence[str]] | None = None,
    num_candidates: int = 100,
    seed: int = 0,
    ks: Sequence[int] = (1, 5, 10),
    caption_metric_names: Sequence[str] = CAPTION_METRICS,
    tokenizer: str = "ptb",
    hard_sets: datasets.Dataset | None = None,
    disable_tqdm: bool = False,
) -> dict:
    """Retrieval P@1 / recall@k, captioning metrics (when `references` are given) and hard-set accuracy.

    Args:
        captions (`Sequence[str]`): one caption per image (generated, or references for a "human" row).
        retriever (`Retriever`): the judge that reads the captions.
        image_embeds (`torch.Tensor` of shape `[N, D]`): `retriever` embeddings of the images, row-aligned
            with `captions` (compute once per dataset with `encode_gallery` and reuse across models).
        references (`Sequence[Sequence[str]]`, *optional*): reference captions per image; skip for no
            captioning metrics.
        num_candidates (`int`, defaults to `100`), seed (`int`, defaults to `0`), ks: see `retrieval_metrics` (a
            gallery of fewer images than `num_candidates` uses all of them, with a warning).
        caption_metric_names (`Sequence[str]`, defaults to all): see `caption_metrics`.
        tokenizer (`str`, defaults to `"ptb"`): see `caption_metrics`.
        hard_sets (`datasets.Dataset`, *optional*): sets from `build_hard_distractor_sets` over the same
            images; adds `imagecode_accuracy` using each set's target caption.
        disable_tqdm (`bool`, defaults to `False`): no progress bars while encoding the captions.

    Returns:
        One flat `dict` of metrics (plus `skipped` when a captioning metric could not run).
    """
    metrics = retrieval_metrics(
        retriever,
        captions,
        image_embeds=image_embeds,
        num_candidates=num_candidates,
        seed=seed,
        ks=ks,
        disable_tqdm=disable_tqdm,
    )
    if references is not None:
        metrics.update(caption_metrics(captions, references, metrics=caption_metric_names, tokenizer=tokenizer))
    if hard_sets is not None:
        set_captions = [captions[i] for i in hard_sets["target_index"]]
        hard = hard_distractor_accuracy(retriever, set_captions, hard_sets, image_embeds, disable_tqdm=disable_tqdm)
        metrics["imagecode_accuracy"] = hard["imagecode_accuracy"]
        metrics["num_hard_sets"] = hard["num_sets"]
    return metrics
