"""Cross-process gathers that accept a different number of rows on every process.

Every process may hold a different number of images (one dropped an image it could not decode), so nothing here
assumes equal sizes: `gather_rows` pads to the largest process and trims, `gather_objects` pickles.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def process_rank_and_count() -> tuple[int, int]:
    """`(rank, world_size)` of `torch.distributed` (which `accelerate` initialises), or `(0, 1)` without it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@torch.no_grad()
def gather_rows_by_process(local_rows: torch.Tensor) -> list[torch.Tensor]:
    """Every process's `[n_rank, ...]` rows, one tensor per process in rank order; processes may hold different
    `n_rank`. Every process must call it, with rows of the same trailing shape and dtype.

    Works with any `torch.distributed` backend (gloo on CPU, NCCL on GPU with the rows on this process's GPU).
    """
    _, world_size = process_rank_and_count()
    if world_size == 1:
        return [local_rows]
    local_rows = local_rows.contiguous()
    size = torch.tensor([local_rows.shape[0]], device=local_rows.device, dtype=torch.long)
    sizes = [torch.zeros_like(size) for _ in range(world_size)]
    dist.all_gather(sizes, size)
    sizes = [int(s.item()) for s in sizes]
    # all_gather needs equal shapes: pad every process to the largest, then drop the padding.
    padded = local_rows.new_zeros((max(sizes), *local_rows.shape[1:]))
    padded[: local_rows.shape[0]] = local_rows
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return [rows[:n] for rows, n in zip(gathered, sizes)]


@torch.no_grad()
def gather_rows(local_rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every process's `[n_rank, ...]` rows in rank order; processes may hold different `n_rank`.

    Works with any `torch.distributed` backend (gloo on CPU, NCCL on GPU with the rows on this process's GPU).
    Every process must call it, with rows of the same trailing shape and dtype.

    Returns:
        `(all_rows, offset)`: `all_rows` is `[sum(n_rank), ...]`; this process's rows start at `offset`.
    """
    rank, world_size = process_rank_and_count()
    if world_size == 1:
        return local_rows, 0
    parts = gather_rows_by_process(local_rows)
    return torch.cat(parts), sum(part.shape[0] for part in parts[:rank])


def gather_objects(local_objects: list) -> list:
    """Concatenate every process's list (of any picklable objects, any length) in rank order."""
    _, world_size = process_rank_and_count()
    if world_size == 1:
        return list(local_objects)
    gathered: list[list | None] = [None] * world_size
    dist.all_gather_object(gathered, list(local_objects))
    return [item for part in gathered for item in part]
