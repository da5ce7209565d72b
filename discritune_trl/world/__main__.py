"""Command line: build (or find in the cache) the embedded world, or show the cached one.

    python -m discritune_trl.world build [--cache-dir DIR] [--seed 0] [--regime vague] [--rebuild] [--threads N]
    python -m discritune_trl.world info [--cache-dir DIR] [--seed 0] [--regime vague]

(also `discritune-trl world ...`) print the world's folder, the paths of its dataset, retriever and captioner, the
retriever's P@1 and the build times; `info` builds nothing and says so when the world is not in the cache.
"""

from __future__ import annotations

import argparse
import json

import torch

from .build import WorldConfig, cached_world, default_cache_dir, load_or_build_world
from .captions import WORLD_REGIMES


def main(argv: list[str] | None = None, prog: str = "python -m discritune_trl.world") -> None:
    """Run `build` or `info` (`argv`: the arguments after the program name)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
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
    info = commands.add_parser("info", help="Show the cached world; builds nothing.")
    info.add_argument("--cache-dir", default=None, help=f"Parent folder of cached worlds ({default_cache_dir()}).")
    info.add_argument("--seed", type=int, default=0, help="Which world (its seed).")
    info.add_argument("--regime", default="vague", choices=tuple(WORLD_REGIMES), help="Which world (its regime).")
    args = parser.parse_args(argv)

    if args.command == "info":
        paths = cached_world(args.cache_dir, WorldConfig.from_seed(args.seed, args.regime))
        if paths is None:
            print(f"No such world in {args.cache_dir or default_cache_dir()}: run `build` with the same flags first.")
            return
    else:
        if args.threads is not None:
            torch.set_num_threads(args.threads)
        config = WorldConfig.from_seed(args.seed, args.regime)
        paths = load_or_build_world(args.cache_dir, config, rebuild=args.rebuild)
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
