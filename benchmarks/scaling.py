"""Scaling figures on CPU processes: training images/s at 1 and 2 processes, and the frozen-embedding cache pass.

Training: `DiscriTuneTrainer.train()` at an equal per-process batch (`--per_device_batch`, default 32) on 1 and 2
CPU processes (2: `accelerate launch` with `examples/accelerate_configs/cpu_2proc.yaml`, DDP over gloo), once with
candidate pools (`--pool_size`, default 16: each process's batch holds its own pools, nothing gathered for the
reward) and once with the global pool (`pool_size=-1`: every caption against the whole global batch, image
embeddings gathered). Images/s = images of the global batch / median step time (after warm-up steps), the
frozen-embedding cache computed before the timed steps.

Cache pass: `cache_frozen_embeddings` over `--cache_images` JPEG images (`--image_size` pixels, quality 90, in a
`datasets.Image` column, as a real dataset holds them) with 1 and 2 processes, each with 0 and `--workers` decoding
workers; plus the decoding alone (decode + both preprocessings, one process), which caps the pass when the
encoders are faster than it.

Models: tiny random ones by default (what two CPU cores can time in minutes); `--full` uses CLIP ViT-B/32 +
GPT-2 124M (random weights). The figures are CPU figures of this machine: they show how the pieces scale, not what
a GPU does (see docs/distributed.md for the projection).

Usage:
    python benchmarks/scaling.py                          # everything, tiny models
    python benchmarks/scaling.py --skip_training --cache_images 2000
    python benchmarks/scaling.py --json scaling.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import datasets
import numpy as np
import torch
from PIL import Image


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from throughput import PhaseTimer, StepTimes, build_models  # noqa: E402

from discritune_trl import DiscriTuneConfig, DiscriTuneTrainer, cache_frozen_embeddings  # noqa: E402
from discritune_trl.trainer.collator import decode_image  # noqa: E402


def jpeg_dataset(count: int, size: int, seed: int = 0) -> datasets.Dataset:
    """`count` random JPEG images of `size` x `size` pixels, stored as bytes in a `datasets.Image` column."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    rows = []
    for index in range(count):
        buffer = io.BytesIO()
        Image.fromarray(np.roll(base, index, axis=0)).save(buffer, format="JPEG", quality=90)
        rows.append({"bytes": buffer.getvalue(), "path": None})
    return datasets.Dataset.from_dict({"image": rows}).cast_column("image", datasets.Image())


# ---------------------------------------------------------------------------------------------------- workers


def train_worker(args) -> None:
    """One training configuration, in this process (possibly one of several under `accelerate launch`)."""
    torch.set_num_threads(args.threads)
    policy, reward_model = build_models(tiny=not args.full)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    steps = args.warmup_steps + args.steps
    dataset = jpeg_dataset(args.per_device_batch * world_size * steps, args.image_size)
    timer = PhaseTimer(torch.device("cpu"))
    with tempfile.TemporaryDirectory() as private:
        config = DiscriTuneConfig(
            output_dir=args.worker_cache_dir or private,  # shared by the processes: the cache pass meets there
            per_device_train_batch_size=args.per_device_batch,
            pool_size=args.worker_pool_size,
            max_steps=steps,
            max_new_tokens=args.max_new_tokens,
            use_cpu=True,
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            cache_num_workers=0,
        )
        trainer = DiscriTuneTrainer(model=policy, reward_model=reward_model, args=config, train_dataset=dataset)
        times = StepTimes(timer, args.warmup_steps)
        trainer.add_callback(times)
        trainer.train()
        if trainer.accelerator.is_main_process:
            step = statistics.median(times.times)
            with open(args.worker_json, "w") as handle:
                json.dump(
                    {"step_seconds": step, "images_per_second": args.per_device_batch * world_size / step}, handle
                )


def cache_worker(args) -> None:
    """One cache-pass configuration; several processes join a gloo group first."""
    torch.set_num_threads(args.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world_size > 1:
        torch.distributed.init_process_group("gloo")
    policy, reward_model = build_models(tiny=not args.full)
    dataset = jpeg_dataset(args.cache_images, args.image_size)
    with tempfile.TemporaryDirectory() as private:
        cache_dir = args.worker_cache_dir or private
        if world_size > 1:
            torch.distributed.barrier()
        start = time.perf_counter()
        cached = cache_frozen_embeddings(
            dataset,
            policy,
            reward_model,
            batch_size=args.cache_batch_size,
            cache_dir=cache_dir,
            num_workers=args.worker_workers,
            shard_size=args.cache_shard_size,
            process_index=rank,
            num_processes=world_size,
        )
        seconds = time.perf_counter() - start
    assert len(cached) == args.cache_images
    if rank == 0:
        with open(args.worker_json, "w") as handle:
            json.dump({"seconds": seconds, "images_per_second": args.cache_images / seconds}, handle)
    if world_size > 1:
        torch.distributed.destroy_process_group()


# ---------------------------------------------------------------------------------------------------- driver


def run(args, role: str, processes: int, extra: list[str]) -> dict:
    """Run one configuration in fresh processes and return its figures."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "figures.json")
        own = list(sys.argv[1:])
        if "--json" in own:
            index = own.index("--json")
            del own[index : index + 2]
        worker = [os.path.abspath(__file__), *own, "--role", role, "--worker_json", path, *extra]
        worker += ["--worker_cache_dir", os.path.join(folder, "shared")]
        if processes == 1:
            command = [sys.executable, *worker]
        elif role == "train":
            command = [
                sys.executable, "-m", "accelerate.commands.launch",
                "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "cpu_2proc.yaml"),
                "--num_processes", str(processes), "--main_process_port", "0", *worker,
            ]  # fmt: skip
        else:
            command = [
                sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                "--master_port", str(free_port()), *worker,
            ]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONPATH": ROOT}
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL if not args.verbose else None)
        with open(path) as handle:
            return json.load(handle)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def decode_only(args) -> float:
    """Images/s of decoding + both preprocessings in one process: the ceiling of a cache pass without workers."""
    policy, reward_model = build_models(tiny=not args.full)
    dataset = jpeg_dataset(args.cache_images, args.image_size).cast_column("image", datasets.Image(decode=False))
    start = time.perf_counter()
    for begin in range(0, len(dataset), args.cache_batch_size):
        images = [decode_image(value) for value in dataset[begin : begin + args.cache_batch_size]["image"]]
        policy.preprocess(images)
        reward_model.preprocess(images)
    return len(dataset) / (time.perf_counter() - start)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="CLIP ViT-B/32 + GPT-2 124M instead of tiny models.")
    parser.add_argument("--per_device_batch", type=int, default=32)
    parser.add_argument("--pool_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup_steps", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=20)
    parser.add_argument("--image_size", type=int, default=256, help="Pixels per side of the JPEG images.")
    parser.add_argument("--cache_images", type=int, default=1024)
    parser.add_argument("--cache_batch_size", type=int, default=64)
    parser.add_argument("--cache_shard_size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2, help="Decoding workers per process in the cache pass.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process.")
    parser.add_argument("--skip_training", action="store_true")
    parser.add_argument("--skip_cache", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--role", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_json", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_pool_size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker_workers", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--worker_cache_dir", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    datasets.disable_progress_bars()
    if args.role == "train":
        return train_worker(args)
    if args.role == "cache":
        return cache_worker(args)
    figures = {"command": " ".join(["python", "benchmarks/scaling.py", *sys.argv[1:]]), "cpu_count": os.cpu_count()}
    models = "CLIP ViT-B/32 + GPT-2 124M" if args.full else "tiny"
    if not args.skip_training:
        figures["training"] = {}
        print(f"Training, {models} models, {args.per_device_batch} images per process, {args.threads} thread(s) each:")
        for processes in (1, 2):
            for label, pool in (("pools", args.pool_size), ("global pool", -1)):
                result = run(args, "train", processes, ["--worker_pool_size", str(pool)])
                pools = "-" if pool == -1 else f"{args.per_device_batch * processes // pool} x {pool}"
                figures["training"][f"{processes}p {label}"] = {**result, "pools": pools}
                print(
                    f"  {processes} process(es), {label:11s} (pools {pools:>6s}): "
                    f"{result['images_per_second']:7.1f} img/s ({result['step_seconds']:.2f} s/step)"
                )
    if not args.skip_cache:
        figures["cache"] = {"decode_only_one_process": decode_only(args)}
        print(
            f"Cache pass, {models} models, {args.cache_images} JPEG images of {args.image_size}px "
            f"(decoding alone, one process: {figures['cache']['decode_only_one_process']:.0f} img/s):"
        )
        for processes in (1, 2):
            for workers in (0, args.workers):
                result = run(args, "cache", processes, ["--worker_workers", str(workers)])
                figures["cache"][f"{processes}p {workers}w"] = result
                print(
                    f"  {processes} process(es), {workers} decoding worker(s) each: "
                    f"{result['images_per_second']:7.1f} img/s ({result['seconds']:.1f} s)"
                )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(figures, handle, indent=2)


if __name__ == "__main__":
    main()
