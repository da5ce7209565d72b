"""Command line: build (or find in the cache) the embedded world.

    python -m discritune_trl.world build [--cache-dir DIR] [--seed 0] [--regime vague] [--rebuild] [--threads N]

prints the world's folder and the paths of its dataset, retriever and captioner.
"""

from __future__ import annotations

import argparse
import json

import torch

from .build import WorldConfig, default_cache_dir, load_or_build_world
from .captions import WORLD_REGIMES


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m discritune_trl.world", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="Build the world (dataset, retriever, captioner) or reuse the cache.")
    build.add_argument(
        "--cache-dir", default=None, help=f"Parent folder of cached worlds (default: {default_cache_dir()})."
    )
    build.add_argument("--seed", type=int, default=0, help="Seeds the images, captions and both trainings.")
    build.add_argument(
        "--regime",
        default="vague",
        choices=tuple(WORLD_REGIMES),
        help="How good the captioner starts: vague (the default world), mixed, or good (docs/world.md).",
    )
    build.add_argument("--rebuild", action="store_true", help="Build again even if the world is cached.")
    build.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    paths = load_or_build_world(args.cache_dir, WorldConfig.from_seed(args.seed, args.regime), rebuild=args.rebuild)
    manifest = paths.read_manifest()
    print(f"world:      {paths.root}")
    print(f"dataset:    {paths.dataset}")
    print(f"retriever:  {paths.retriever_checkpoint}")
    print(f"            {paths.retriever_config}")
    print(f"captioner:  {paths.captioner}")
    print("retriever P@1 (100 candidates, %):", json.dumps(manifest["retriever_p_at_1"]))
    print("build seconds:", json.dumps({name: round(value, 1) for name, value in manifest["build_seconds"].items()}))


if __name__ == "__main__":
    main()
