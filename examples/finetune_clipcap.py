"""Fine-tune a ClipCap captioner with DiscriTune: a frozen CLIP retriever judges each caption.

With no arguments it runs the embedded default: the synthetic world of `discritune_trl.world` (built on first use
and cached), a small ClipCap pretrained there by maximum likelihood on vague "human" captions, and a small CLIP
retriever; it evaluates before and after fine-tuning, in-domain and on a shifted domain, and writes
`results.json`, `results.md` and two PNGs to the output folder. It runs unchanged under `python`,
`accelerate launch`, and several processes (see docs/distributed.md):

    accelerate launch examples/finetune_clipcap.py

The paper's setting (needs the weights, e.g. when connected):

    accelerate launch examples/finetune_clipcap.py \
        --dataset_name ./coco_karpathy --dataset_train_split train --dataset_test_split test \
        --clipcap_model ./coco_weights.pt --clip_model_name ViT-B-32 --clip_pretrained openai \
        --retriever_model_name ViT-B-32 --retriever_pretrained openai \
        --cross_domain_eval flickr=./flickr30k:test nocaps=./nocaps:validation \
        --output_dir discritune-coco --num_train_epochs 20

Every `DiscriTuneConfig` field is a flag (`--learning_rate`, `--baseline`, `--reward_type`, ...); see
`python examples/finetune_clipcap.py --help`. As in TRL's scripts, `--config recipe.yaml` reads any of them from a
YAML file (flags on the command line win); `examples/recipes/` holds the paper's settings:

    accelerate launch examples/finetune_clipcap.py --config examples/recipes/clipcap_coco.yaml

Without `--dataset_name` the world's settings (`discritune_trl.world.WORLD_TRAINING_DEFAULTS`) are the defaults,
below the recipe and the flags (`--max-steps 5` means 5 steps); flags that only apply to your own data or
checkpoints (`--clipcap_model`, the retriever flags, ...) are refused there, naming the flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import MISSING, dataclass, field, fields

import yaml
from trl import TrlParser

from discritune_trl import (
    ClipCapPolicy,
    DiscriTuneConfig,
    DiscriTuneTrainer,
    OpenCLIPRetriever,
    TransformersCLIPRetriever,
)
from discritune_trl.models.auto import load_policy
from discritune_trl.utils.data import load_image_dataset
from discritune_trl.world import WORLD_TRAINING_DEFAULTS, WorldConfig, run_world_job


DEFAULT_OUTPUT_DIR = "outputs/discritune-clipcap"


@dataclass
class ScriptArguments:
    """Data. Without `dataset_name` the embedded synthetic world is used."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset, a folder saved with save_to_disk, or an image folder with metadata.jsonl."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to fine-tune on."})
    dataset_test_split: str | None = field(default="test", metadata={"help": "Split to evaluate on (or none)."})
    dataset_streaming: bool = field(
        default=False,
        metadata={"help": "Stream the train split (datasets.IterableDataset; needs --max_steps). Nothing is cached."},
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many train images."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many eval images."})
    cross_domain_eval: list[str] = field(
        default_factory=list,
        metadata={
            "help": "More evaluation sets, as NAME=PATH or NAME=PATH:SPLIT (default split: dataset_test_split), e.g. "
            "flickr=./flickr30k:test, the paper's cross-domain evaluation. Each set's P@1 is reported under its name."
        },
    )
    world_cache_dir: str | None = field(
        default=None, metadata={"help": "Where the embedded world is built and cached (default: ~/.cache)."}
    )


@dataclass
class ModelArguments:
    """The captioner and the retriever."""

    clipcap_model: str | None = field(
        default=None,
        metadata={"help": "A folder saved with save_pretrained (or a Hub id), or an original ClipCap .pt file."},
    )
    clipcap_tokenizer: str = field(default="gpt2", metadata={"help": "GPT-2 tokenizer for an original .pt file."})
    clip_model_name: str = field(default="ViT-B-32", metadata={"help": "ClipCap's open_clip image encoder."})
    clip_pretrained: str | None = field(default="openai", metadata={"help": "Its open_clip pretrained tag."})
    clip_checkpoint: str | None = field(default=None, metadata={"help": "Or a local open_clip checkpoint."})
    retriever_model_name: str = field(default="ViT-B-32", metadata={"help": "open_clip retriever architecture."})
    retriever_pretrained: str | None = field(default="openai", metadata={"help": "Its open_clip pretrained tag."})
    retriever_checkpoint: str | None = field(default=None, metadata={"help": "Or a local open_clip checkpoint."})
    retriever_model_cfg: str | None = field(
        default=None, metadata={"help": "JSON file with an open_clip architecture config, for custom retrievers."}
    )
    retriever_transformers_model: str | None = field(
        default=None, metadata={"help": "Use a transformers CLIPModel/SiglipModel (folder or Hub id) instead."}
    )
    use_peft: bool = field(default=False, metadata={"help": "Train LoRA adapters on GPT-2's attention only."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})


def build_policy(model_args: ModelArguments):
    path = model_args.clipcap_model
    if path is None:
        raise ValueError("--clipcap_model is required with --dataset_name (a saved folder or an original .pt file).")
    if path.endswith(".pt"):
        return ClipCapPolicy.from_original_checkpoint(
            path,
            tokenizer=model_args.clipcap_tokenizer,
            clip_model_name=model_args.clip_model_name,
            clip_pretrained=None if model_args.clip_checkpoint else model_args.clip_pretrained,
            clip_checkpoint_path=model_args.clip_checkpoint,
        )
    return load_policy(path)


def build_retriever(model_args: ModelArguments):
    if model_args.retriever_transformers_model:
        return TransformersCLIPRetriever.from_pretrained(model_args.retriever_transformers_model)
    model_cfg = None
    if model_args.retriever_model_cfg:
        with open(model_args.retriever_model_cfg) as handle:
            model_cfg = json.load(handle)
    local = model_args.retriever_checkpoint or model_cfg
    return OpenCLIPRetriever(
        None if model_cfg else model_args.retriever_model_name,
        pretrained=None if local else model_args.retriever_pretrained,
        model_cfg=model_cfg,
        checkpoint_path=model_args.retriever_checkpoint,
    )


def peft_config(model_args: ModelArguments):
    if not model_args.use_peft:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=model_args.lora_r, lora_alpha=model_args.lora_alpha, target_modules=["c_attn"], fan_in_fan_out=True
    )


def load_eval_datasets(script_args: ScriptArguments):
    """The test split of `dataset_name`, or, with `cross_domain_eval`, a dict of named evaluation sets (the test split
    under its split name first); `None` when there is nothing to evaluate on."""
    sets = {}
    if script_args.dataset_test_split:
        sets[script_args.dataset_test_split] = (script_args.dataset_name, script_args.dataset_test_split)
    for entry in script_args.cross_domain_eval:
        name, equals, location = entry.partition("=")
        path, colon, split = location.rpartition(":") if ":" in location else (location, "", "")
        if not equals or not name or not path or name in sets:
            raise ValueError(
                f"--cross_domain_eval {entry!r}: expected NAME=PATH or NAME=PATH:SPLIT with a new NAME "
                f"(names so far: {sorted(sets)})."
            )
        sets[name] = (path, split if colon else script_args.dataset_test_split or "test")
    loaded = {}
    for name, (path, split) in sets.items():
        config = script_args.dataset_config if path == script_args.dataset_name else None
        dataset = load_image_dataset(path, split, config)
        if script_args.max_eval_samples:
            dataset = dataset.select(range(min(script_args.max_eval_samples, len(dataset))))
        loaded[name] = dataset
    if len(loaded) <= 1:
        return next(iter(loaded.values()), None)
    return loaded


# Flags that only mean something with --dataset_name: on the embedded world they would be dropped, so they are
# refused instead. The world trains its own ClipCap and retriever; LoRA (--use_peft) applies to its ClipCap.
WORLD_IGNORES = (
    "dataset_config", "dataset_train_split", "dataset_test_split", "dataset_streaming", "max_train_samples",
    "max_eval_samples", "cross_domain_eval", "clipcap_model", "clipcap_tokenizer", "clip_model_name",
    "clip_pretrained", "clip_checkpoint", "retriever_model_name", "retriever_pretrained", "retriever_checkpoint",
    "retriever_model_cfg", "retriever_transformers_model",
)  # fmt: skip


def world_is_used(argv: list[str]) -> bool:
    """Whether neither the command line nor the `--config` recipe names a `dataset_name`."""
    peek = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    peek.add_argument("--dataset_name", "--dataset-name", default=None)
    peek.add_argument("--config", default=None)
    known, _ = peek.parse_known_args(argv)
    if known.dataset_name is not None:
        return False
    if known.config is not None:
        with open(known.config) as handle:
            return (yaml.safe_load(handle) or {}).get("dataset_name") is None
    return True


def make_parser(world: bool) -> TrlParser:
    """The parser, with the embedded world's settings as its defaults when `world` (so `--help` shows them)."""
    world_defaults = ", ".join(f"{name}={value!r}" for name, value in WORLD_TRAINING_DEFAULTS.items())
    parser = TrlParser(
        (ScriptArguments, DiscriTuneConfig, ModelArguments),
        allow_abbrev=False,
        description=(
            "DiscriTune a ClipCap captioner against a frozen CLIP retriever. Without --dataset_name (on the command "
            "line or in --config) the embedded synthetic world runs (discritune_trl.world), with these defaults: "
            f"{world_defaults}; a --config recipe and the flags override them, and flags that only apply to your "
            "own data or checkpoints are refused. The defaults shown below are "
            + ("the world's." if world else "the paper's (run --help without --dataset_name for the world's).")
        ),
    )
    parser.set_defaults_with_config(output_dir=DEFAULT_OUTPUT_DIR, **(WORLD_TRAINING_DEFAULTS if world else {}))
    return parser


def parse_arguments(argv: list[str] | None = None) -> tuple[ScriptArguments, DiscriTuneConfig, ModelArguments]:
    """`(script_args, training_args, model_args)` from the command line and `--config recipe.yaml` (TRL's
    `TrlParser`: the YAML replaces the defaults, the command line overrides the YAML). Without a `dataset_name`, the
    defaults below both are :data:`~discritune_trl.world.WORLD_TRAINING_DEFAULTS`, and a flag that cannot apply to
    the world raises."""
    argv = sys.argv[1:] if argv is None else list(argv)
    world = world_is_used(argv)
    script_args, training_args, model_args = make_parser(world).parse_args_and_config(argv)
    if world:
        for args in (script_args, model_args):
            for item in fields(args):
                value = getattr(args, item.name)
                default = item.default_factory() if item.default is MISSING else item.default
                if item.name in WORLD_IGNORES and value != default:
                    raise ValueError(
                        f"--{item.name}={value!r} does not apply to the embedded world, which runs without "
                        "--dataset_name with its own ClipCap, retriever and splits: give --dataset_name to use it, "
                        "or drop the flag."
                    )
    return script_args, training_args, model_args


def main(
    script_args: ScriptArguments,
    training_args: DiscriTuneConfig,
    model_args: ModelArguments,
    world_config: WorldConfig | None = None,
) -> None:
    """Fine-tune on `dataset_name`, or without it run the embedded world's job (`world_config`: which world)."""
    start = time.time()
    if script_args.dataset_name is None:
        run_world_job(
            training_args,
            cache_dir=script_args.world_cache_dir,
            start=start,
            world_config=world_config,
            peft_config=peft_config(model_args),
        )
        return

    train_dataset = load_image_dataset(
        script_args.dataset_name,
        script_args.dataset_train_split,
        script_args.dataset_config,
        streaming=script_args.dataset_streaming,
    )
    if script_args.max_train_samples and script_args.dataset_streaming:
        train_dataset = train_dataset.take(script_args.max_train_samples)
    elif script_args.max_train_samples:
        train_dataset = train_dataset.select(range(min(script_args.max_train_samples, len(train_dataset))))
    eval_dataset = load_eval_datasets(script_args)

    # The trainer builds the reward model from the config (build_reward_model): reward_type, num_hard_negatives
    # (its bank mined from the training images) and hard_negative_similarity_ceiling all take effect.
    trainer = DiscriTuneTrainer(
        model=build_policy(model_args),
        reward_model=build_retriever(model_args),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=peft_config(model_args),
    )
    metrics = {}
    if eval_dataset is not None:
        metrics["before"] = trainer.evaluate(metric_key_prefix="before")
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_dataset is not None:
        metrics["after"] = trainer.evaluate()
    trainer.save_model(training_args.output_dir)
    metrics["runtime_seconds"] = time.time() - start
    if trainer.is_world_process_zero():
        with open(os.path.join(training_args.output_dir, "metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
        print(json.dumps(metrics, indent=2))
        print(f"Model and model card: {training_args.output_dir}")
        print(f"Metrics: {os.path.join(training_args.output_dir, 'metrics.json')}")
    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=script_args.dataset_name)


if __name__ == "__main__":
    main(*parse_arguments())
