"""Run a function on several local CPU processes joined by `torch.distributed` (gloo), for multi-process tests."""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, fn: Callable, world_size: int, port: int, out_dir: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        result = fn(rank, world_size, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_on_processes(
    fn: Callable[..., Any], world_size: int = 2, args: tuple = (), start_method: str | None = None
) -> list[Any]:
    """Call `fn(rank, world_size, *args)` on `world_size` local processes joined by a gloo process group.

    Its return values (anything `torch.save` can write) come back as a list in rank order; a failure in any
    process raises here.

    Args:
        fn: the work of one process; with `"spawn"` it must be importable (defined at module level).
        world_size: number of processes.
        args: extra positional arguments for `fn`.
        start_method: `"fork"` (default where available: the processes inherit the imported modules and start in
            well under a second; each sets one CPU thread before any torch work) or `"spawn"` (re-imports
            everything in each process, several seconds).
    """
    if start_method is None:
        start_method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _entry,
            args=(fn, world_size, _free_port(), out_dir, args),
            nprocs=world_size,
            join=True,
            start_method=start_method,
        )
        return [torch.load(os.path.join(out_dir, f"rank{rank}.pt"), weights_only=False) for rank in range(world_size)]
