"""Candidate pools: which images of a training step each caption is scored against.

The paper scores each caption against the 100 images of its batch (the target and 99 distractors). With more
devices, or a larger batch, the step's images are split into *pools* of that many images, so the task stays the
paper's while the work per step grows: a pool is a unit of the task, the global batch is a unit of work.

Pools are formed **per device** whenever they can be: a device's images are split into consecutive pools and no
image embedding crosses processes. Only when the pool is larger than a device's batch (e.g. 4 processes x 25
images with pools of 100) does a pool span several consecutive processes, whose images are then gathered.
"""

from __future__ import annotations

from dataclasses import dataclass


GLOBAL_POOL = -1  # `pool_size=-1`: every image of the global batch is a candidate for every caption


@dataclass(frozen=True)
class PoolLayout:
    """How a training step's images form pools; what `DiscriminativeRewardModel.forward` is given.

    Args:
        pool_size: images per pool, or `None` for one pool of all the images of `processes_per_pool` processes.
        processes_per_pool: consecutive processes whose images are gathered (1: no gather).
        num_pools: pools in the global batch when every image is readable.
        images_per_pool: images in each of those pools.
    """

    pool_size: int | None
    processes_per_pool: int
    num_pools: int
    images_per_pool: int


def pool_layout(pool_size: int, per_device_batch_size: int, num_processes: int) -> PoolLayout:
    """The pools of a global batch of `per_device_batch_size x num_processes` images, or a `ValueError`.

    - `pool_size=-1` (`GLOBAL_POOL`), or a global batch no larger than `pool_size`: one pool, the whole global batch.
    - `per_device_batch_size` a multiple of `pool_size`: each device's images form their own pools (no gather).
    - `pool_size` a multiple of `per_device_batch_size`, and the processes a multiple of `pool_size /
      per_device_batch_size`: each pool is the images of that many consecutive processes.
    - anything else would make pools straddle devices unevenly and is refused with the numbers.
    """
    if pool_size != GLOBAL_POOL and pool_size < 1:
        raise ValueError(f"pool_size={pool_size} must be >= 1, or -1 for the whole global batch.")
    global_batch = per_device_batch_size * num_processes
    if pool_size == GLOBAL_POOL or global_batch <= pool_size:
        return PoolLayout(None, num_processes, 1, global_batch)
    if per_device_batch_size % pool_size == 0:
        return PoolLayout(pool_size, 1, global_batch // pool_size, pool_size)
    if pool_size % per_device_batch_size == 0 and num_processes % (pool_size // per_device_batch_size) == 0:
        processes = pool_size // per_device_batch_size
        return PoolLayout(None, processes, num_processes // processes, pool_size)
    raise ValueError(
        f"The global batch of {global_batch} images (per_device_train_batch_size={per_device_batch_size} x "
        f"{num_processes} process(es)) cannot be split into pools of pool_size={pool_size}: pools are formed within "
        "a device (per_device_train_batch_size a multiple of pool_size) or over whole devices (pool_size a multiple "
        "of per_device_train_batch_size, dividing the processes evenly). Set per_device_train_batch_size to a "
        f"multiple of {pool_size}, or pool_size to a divisor of {per_device_batch_size}, or pool_size=-1 to score "
        f"every caption against all {global_batch} images."
    )


def pool_bounds(num_images: int, pool_size: int | None) -> list[tuple[int, int]]:
    """`[(start, end), ...]`: `num_images` consecutive images split into `ceil(num_images / pool_size)` pools of
    nearly equal size: exactly `pool_size` each when it divides `num_images`; a process that lost unreadable
    images keeps its number of pools, each smaller by its share of the lost images (never fewer than 2 images
    in a pool while there are 2 to share). `pool_size=None`: one pool of all images."""
    if num_images == 0:
        return []
    if pool_size is None or num_images <= pool_size:
        return [(0, num_images)]
    num_pools = -(-num_images // pool_size)
    if pool_size >= 2:  # lost images never leave a pool of one image (no distractor) while two can share
        num_pools = min(num_pools, max(1, num_images // 2))
    bounds, start = [], 0
    for index in range(num_pools):
        size = num_images // num_pools + (index < num_images % num_pools)
        bounds.append((start, start + size))
        start += size
    return bounds
