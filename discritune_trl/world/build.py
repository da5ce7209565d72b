"""Build the whole world from one seed, and cache it: the dataset, the retriever and the MLE captioner.

    python -m discritune_trl.world build --cache-dir ~/.cache/discritune_trl/world

or, from Python, `paths = load_or_build_world(cache_dir)`: the first call builds everything (a few minutes on
two CPU cores, with progress bars), later calls with the same config return the cached folder at once.

A world folder holds:

- `dataset/`: the `DatasetDict` (`train`, `in_domain`, `shifted`), from `DatasetDict.save_to_disk`;
- `retriever/`: `open_clip_model.safetensors` + `open_clip_config.json`, loadable with
  `OpenCLIPRetriever(model_cfg=..., checkpoint_path=...)`;
- `captioner/`: the ClipCap, from `save_pretrained` (weights, config, tokenizer);
- `world.json`: the config it was built from, the retriever's P@1 on descriptive text, and build times. It is
  written last, so a folder without it is an interrupted build and is rebuilt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import datasets
import torch
from tqdm.auto import tqdm

from ..evaluation.retrieval import precision_at_1
from ..models.clipcap import ClipCapPolicy
from ..retrievers.open_clip_retriever import OpenCLIPRetriever
from ..utils.open_clip_utils import build_open_clip
from .captions import HumanCaptionStyle
from .dataset import WorldDataConfig, generate_world
from .tokenizer import train_world_tokenizer
from .train_captioner import CaptionerTrainingConfig, build_world_clipcap, encode_split, train_captioner
from .train_retriever import (
    RETRIEVER_CHECKPOINT,
    RETRIEVER_CONFIG,
    RetrieverTrainingConfig,
    encode_images,
    encode_texts,
    preprocess_split,
    save_retriever,
    train_retriever,
)


logger = logging.getLogger(__name__)

# Bump when a code change alters what a given config builds, so stale caches are not reused.
WORLD_BUILD_VERSION = 1
MANIFEST = "world.json"
DEFAULT_CACHE_ENV = "DISCRITUNE_WORLD_CACHE"


def default_cache_dir() -> str:
    """`$DISCRITUNE_WORLD_CACHE`, else `~/.cache/discritune_trl/world`."""
    return os.environ.get(DEFAULT_CACHE_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "discritune_trl", "world"
    )


@dataclass
class WorldConfig:
    """Everything a world is built from: its data, its retriever's training and its captioner's training.

    Args:
        data: images, splits and caption styles (:class:`WorldDataConfig`).
        retriever: the open_clip retriever's architecture and contrastive training.
        captioner: the ClipCap's GPT-2 and maximum-likelihood training.
    """

    data: WorldDataConfig = field(default_factory=WorldDataConfig)
    retriever: RetrieverTrainingConfig = field(default_factory=RetrieverTrainingConfig)
    captioner: CaptionerTrainingConfig = field(default_factory=CaptionerTrainingConfig)

    @classmethod
    def from_seed(cls, seed: int, regime: str = "vague") -> WorldConfig:
        """The default world with every random draw (data, retriever, captioner) seeded by `seed`.

        Args:
            seed: seeds the images, the captions and both trainings.
            regime: how good the captioner is before DiscriTune, one of :data:`WORLD_REGIMES`: `"vague"` (the
                default world: the paper's ClipCap-ConCap, trained on vague alt-text), `"mixed"`, or `"good"`
                (near the retriever's ceiling, as the paper's ClipCap-COCO). Only the human captions' style
                changes, so the images and the retriever are those of the default world.
        """
        return cls(
            data=WorldDataConfig(seed=seed, human_style=HumanCaptionStyle.for_regime(regime)),
            retriever=RetrieverTrainingConfig(seed=seed),
            captioner=CaptionerTrainingConfig(seed=seed),
        )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorldConfig:
        return cls(
            data=WorldDataConfig(**values.get("data", {})),  # turns a `human_style` dict back into its dataclass
            retriever=RetrieverTrainingConfig(**values.get("retriever", {})),
            captioner=CaptionerTrainingConfig(**values.get("captioner", {})),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "data": self.data.to_dict(),
            "retriever": self.retriever.to_dict(),
            "captioner": self.captioner.to_dict(),
        }

    def fingerprint(self) -> str:
        """A short hash of the config and the build version: the name of this world's cache folder."""
        payload = json.dumps({"version": WORLD_BUILD_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:12]

    def retriever_fingerprint(self) -> str:
        """A short hash of what the retriever is trained from: the images and descriptions (the data config less
        the human captions' style) and the retriever's config. Worlds that share it share the retriever."""
        data = self.data.to_dict()
        del data["human_style"], data["captions_per_image"]
        payload = json.dumps(
            {"version": WORLD_BUILD_VERSION, "data": data, "retriever": self.retriever.to_dict()}, sort_keys=True
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:12]


@dataclass
class WorldPaths:
    """Where a built world lives; see the module docstring for the layout."""

    root: str

    @property
    def dataset(self) -> str:
        return os.path.join(self.root, "dataset")

    @property
    def retriever_dir(self) -> str:
        return os.path.join(self.root, "retriever")

    @property
    def retriever_checkpoint(self) -> str:
        return os.path.join(self.retriever_dir, RETRIEVER_CHECKPOINT)

    @property
    def retriever_config(self) -> str:
        return os.path.join(self.retriever_dir, RETRIEVER_CONFIG)

    @property
    def captioner(self) -> str:
        return os.path.join(self.root, "captioner")

    @property
    def manifest(self) -> str:
        return os.path.join(self.root, MANIFEST)

    def is_complete(self) -> bool:
        return os.path.isfile(self.manifest)

    def read_manifest(self) -> dict[str, Any]:
        """The contents of `world.json`: `config`, `retriever_p_at_1`, `build_seconds`, ..."""
        with open(self.manifest) as file:
            return json.load(file)

    def retriever_model_cfg(self) -> dict[str, Any]:
        with open(self.retriever_config) as file:
            return json.load(file)

    def load_dataset(self) -> datasets.DatasetDict:
        """The world's `DatasetDict` (`train`, `in_domain`, `shifted`)."""
        return datasets.load_from_disk(self.dataset)

    def load_retriever(self) -> OpenCLIPRetriever:
        """The pretrained retriever, frozen."""
        return OpenCLIPRetriever(model_cfg=self.retriever_model_cfg(), checkpoint_path=self.retriever_checkpoint)

    def load_captioner(self) -> ClipCapPolicy:
        """The maximum-likelihood ClipCap, with its tokenizer, in eval mode."""
        return ClipCapPolicy.from_pretrained(self.captioner).eval()


class _Log:
    """Build messages: printed above the progress bars when `verbose`, else sent to the module logger."""

    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.start = time.time()

    def __call__(self, message: str) -> None:
        logger.info(message)
        if self.verbose:
            tqdm.write(f"[world {time.time() - self.start:6.1f}s] {message}", file=sys.stderr)


@torch.no_grad()
def retriever_p_at_1(
    model: torch.nn.Module, preprocess: Any, tokenizer: Any, split: datasets.Dataset, seed: int = 0
) -> dict[str, float]:
    """P@1 with 100 candidates (in %) of the retriever on `split`, from its descriptive text and its first reference."""
    image_embeds = encode_images(model, preprocess_split(preprocess, split, "retriever: test images", False))
    num_candidates = min(100, len(split))
    texts = {"descriptive": list(split["descriptive"]), "reference": [refs[0] for refs in split["captions"]]}
    scores = {}
    for name, values in texts.items():
        text_embeds = encode_texts(model, tokenizer, values)
        scores[name] = round(100.0 * precision_at_1(text_embeds, image_embeds, num_candidates, seed=seed), 2)
    return scores


def build_world(
    output_dir: str, config: WorldConfig | None = None, verbose: bool = True, retriever_from: WorldPaths | None = None
) -> WorldPaths:
    """Build the world described by `config` into `output_dir` (created; its old contents are replaced).

    Steps, each logged with its time: generate and save the dataset; train the word-level tokenizer; train the
    retriever (or copy it from `retriever_from`, a built world with the same
    :meth:`WorldConfig.retriever_fingerprint`) and measure its P@1; train the ClipCap; write `world.json`.
    """
    config = config or WorldConfig()
    say = _Log(verbose)
    paths = WorldPaths(output_dir)
    if os.path.exists(output_dir):
        shutil.rmtree(output_dir)
    os.makedirs(output_dir)
    timings = {}  # seconds per build step

    data = config.data
    say(
        f"Building the world in {output_dir}: {data.num_train} training images, {data.num_in_domain_test} "
        f"in-domain and {data.num_shifted_test} shifted test images ({data.image_size}x{data.image_size}, seed "
        f"{data.seed})."
    )
    tick = time.time()
    world = generate_world(data, progress=verbose)
    world.save_to_disk(paths.dataset)
    timings["dataset"] = round(time.time() - tick, 1)

    retriever_cfg = config.retriever
    tick = time.time()
    if retriever_from is not None:  # the images and descriptions are the same: so is the trained retriever
        say(f"Copying the retriever of {retriever_from.root} (same images, descriptions and retriever config).")
        shutil.copytree(retriever_from.retriever_dir, paths.retriever_dir)
        model_cfg = paths.retriever_model_cfg()
        model, preprocess, tokenizer = build_open_clip(model_cfg=model_cfg, checkpoint_path=paths.retriever_checkpoint)
    else:
        say(
            f"Training the retriever (open_clip, {retriever_cfg.steps} steps of {retriever_cfg.batch_size} "
            "image-description pairs)."
        )
        model, preprocess, tokenizer = train_retriever(
            world["train"], retriever_cfg, data.image_size, progress=verbose
        )
        model_cfg = retriever_cfg.resolved_model_cfg(data.image_size)
        save_retriever(model, model_cfg, paths.retriever_dir)
    p_at_1 = {
        split: retriever_p_at_1(model, preprocess, tokenizer, world[split]) for split in ("in_domain", "shifted")
    }
    timings["retriever"] = round(time.time() - tick, 1)
    say(
        "Retriever P@1 (100 candidates) on descriptive text: "
        f"in-domain {p_at_1['in_domain']['descriptive']:.1f}%, shifted {p_at_1['shifted']['descriptive']:.1f}%."
    )

    captioner_cfg = config.captioner
    say(
        f"Training the ClipCap on the human captions ({captioner_cfg.steps} steps of {captioner_cfg.batch_size} "
        "image-caption pairs)."
    )
    tick = time.time()
    train_texts = [text for refs in world["train"]["captions"] for text in refs] + list(world["train"]["descriptive"])
    world_tokenizer = train_world_tokenizer(train_texts)
    policy = build_world_clipcap(model_cfg, model, world_tokenizer, captioner_cfg)
    image_embeds = encode_split(policy, world["train"], progress=verbose)
    train_captioner(policy, world["train"], captioner_cfg, image_embeds=image_embeds, progress=verbose)
    policy.save_pretrained(paths.captioner)
    timings["captioner"] = round(time.time() - tick, 1)

    manifest = {
        "config": config.to_dict(),
        "fingerprint": config.fingerprint(),
        "retriever_fingerprint": config.retriever_fingerprint(),
        "retriever_copied_from": retriever_from.root if retriever_from is not None else None,
        "retriever_p_at_1": p_at_1,
        "build_seconds": timings,
    }
    with open(paths.manifest, "w") as file:  # written last: marks the build complete
        json.dump(manifest, file, indent=2)
    say(f"World built in {sum(timings.values()):.0f}s: {output_dir}")
    return paths


@contextlib.contextmanager
def _exclusive(lock_path: str):
    """Hold an exclusive lock on `lock_path` (POSIX), so parallel processes build a world only once."""
    try:
        import fcntl
    except ImportError:  # no POSIX locks (Windows): processes must not build the same world concurrently
        yield
        return
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached_world(cache_dir: str | None = None, config: WorldConfig | None = None) -> WorldPaths | None:
    """The world built from `config` if it is complete in the cache, else `None` (never builds)."""
    config = config or WorldConfig()
    paths = WorldPaths(os.path.join(cache_dir or default_cache_dir(), f"world-{config.fingerprint()}"))
    return paths if paths.is_complete() else None


def load_or_build_world(
    cache_dir: str | None = None, config: WorldConfig | None = None, verbose: bool = True, rebuild: bool = False
) -> WorldPaths:
    """The world built from `config` (default: :class:`WorldConfig`), from the cache or built on first use.

    The world lives in `<cache_dir>/world-<fingerprint>/`, named by a hash of its config, so a changed config
    builds a new world and never reuses a stale one. Several processes (e.g. under `accelerate launch`) may
    call this at once: one builds, the others wait for it and then read the cache.

    Args:
        cache_dir: parent folder of cached worlds; defaults to :func:`default_cache_dir`.
        config: what to build.
        verbose: progress bars and a log line per build step.
        rebuild: build again even when a complete world is cached.

    Returns:
        The :class:`WorldPaths` of the complete world.
    """
    config = config or WorldConfig()
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    paths = WorldPaths(os.path.join(cache_dir, f"world-{config.fingerprint()}"))
    with _exclusive(paths.root + ".lock"):
        if paths.is_complete() and not rebuild:
            _Log(verbose)(f"Using the cached world {paths.root}")
            return paths
        return build_world(paths.root, config, verbose=verbose, retriever_from=_same_retriever(cache_dir, config))


def _same_retriever(cache_dir: str, config: WorldConfig) -> WorldPaths | None:
    """A complete world in `cache_dir` whose retriever `config` would train again (e.g. another regime of the same
    seed), else `None`."""
    wanted = config.retriever_fingerprint()
    for name in sorted(os.listdir(cache_dir)):
        candidate = WorldPaths(os.path.join(cache_dir, name))
        if name.startswith("world-") and name != f"world-{config.fingerprint()}" and candidate.is_complete():
            if candidate.read_manifest().get("retriever_fingerprint") == wanted:
                return candidate
            if WorldConfig.from_dict(candidate.read_manifest()["config"]).retriever_fingerprint() == wanted:
                return candidate
    return None
