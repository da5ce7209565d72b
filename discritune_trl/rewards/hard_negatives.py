"""Hard-negative mining (Appendix D.2): the nearest images of a target by image-embedding cosine."""

from __future__ import annotations

import torch


# A bank row this close to the target (cosine) is the target itself.
SELF_SIMILARITY_TOLERANCE = 1e-4


@torch.no_grad()
def mine_hard_negatives(
    query_embeds: torch.Tensor,
    bank_embeds: torch.Tensor,
    num_negatives: int,
    similarity_ceiling: float | None = 0.8,
    exclude_indices: torch.Tensor | None = None,
) -> tuple[torch.LongTensor, torch.BoolTensor]:
    """For each query image, its `num_negatives` most similar bank images, skipping itself and near-duplicates.

    A bank row is skipped when its cosine with the query is above `similarity_ceiling` (near-duplicates such as
    consecutive video frames; 0.8 as in the paper's Appendix A), within `SELF_SIMILARITY_TOLERANCE` of 1 (the
    query itself, even with `similarity_ceiling=None`), or is the query's own row in `exclude_indices`.

    Args:
        query_embeds: `[n, D]` L2-normalised target image embeddings.
        bank_embeds: `[M, D]` L2-normalised bank image embeddings (e.g. the whole training set).
        num_negatives: `k`, how many neighbours per query.
        similarity_ceiling: maximum cosine of a kept neighbour; `None` keeps everything but the query itself.
        exclude_indices: `[n]` row of each query in the bank, `-1` where it is not in the bank.

    Returns:
        `(indices, valid)`, both `[n, k]`: bank rows, most similar first; `valid` is False where fewer than `k`
        rows passed the filters (the index there is meaningless).
    """
    if query_embeds.shape[-1] != bank_embeds.shape[-1]:
        raise ValueError(
            f"The hard-negative bank has embedding size {bank_embeds.shape[-1]} but the images have "
            f"{query_embeds.shape[-1]}; build the bank with the same retriever's encode_images."
        )
    if num_negatives > bank_embeds.shape[0]:
        raise ValueError(
            f"num_hard_negatives={num_negatives} exceeds the {bank_embeds.shape[0]} images of the hard-negative bank."
        )
    similarities = query_embeds.float() @ bank_embeds.float().T  # [n, M]
    excluded = similarities >= 1.0 - SELF_SIMILARITY_TOLERANCE
    if similarity_ceiling is not None:
        excluded |= similarities > similarity_ceiling
    if exclude_indices is not None:
        exclude_indices = exclude_indices.to(similarities.device)
        rows = torch.nonzero(exclude_indices >= 0).squeeze(1)
        excluded[rows, exclude_indices[rows]] = True
    similarities = similarities.masked_fill(excluded, float("-inf"))
    values, indices = similarities.topk(num_negatives, dim=1)  # [n, k]
    return indices, torch.isfinite(values)
