"""`discritune-trl train`: fine-tune a captioner with DiscriTune; a frozen CLIP retriever judges each caption.

With no arguments it runs the embedded default: the synthetic world of `discritune_trl.world` (built on first use
and cached), a small ClipCap pretrained there by maximum likelihood on vague "human" captions, and a small CLIP
retriever; it evaluates before and after fine-tuning, in-domain and on a shifted domain, and writes
`results.json`, `results.md` and two PNGs to the output folder. It runs unchanged under `python`,
`accelerate launch`, and several processes (see docs/distributed.md):

    accelerate launch examples/finetune_clipcap.py        # a thin wrapper around this module
    accelerate launch -m discritune_trl.scripts.train     # the same
    discritune-trl train                                  # the same, on one process

`--model_name_or_path` picks the captioner by its checkpoint: a folder saved with `save_pretrained` (ClipCap, BLIP,
or any policy registered with `register_policy`, read from `config.json`'s `model_type`; adapters included), a
transformers BLIP checkpoint (`model_type: blip`), a plain prompted vision-language model (any `model_type` of
transformers' `AutoModelForImageTextToText`, e.g. SmolVLM, wrapped in `VLMPolicy` with its default prompt; see
`examples/finetune_vlm.py` for the prompt flag and LoRA defaults), or an original ClipCap `.pt` file.

The paper's setting (needs the weights, e.g. when connected):

    accelerate launch examples/finetune_clipcap.py \
        --dataset_name ./coco_karpathy --dataset_train_split train --dataset_test_split test \
        --model_name_or_path ./coco_weights.pt --clip_model_name ViT-B-32 --clip_pretrained openai \
        --retriever_model_name ViT-B-32 --retriever_pretrained openai \
        --cross_domain_eval flickr=./flickr30k:test nocaps=./nocaps:validation \
        --output_dir discritune-coco --num_train_epochs 20

Every `DiscriTuneConfig` field is a flag (`--learning_rate`, `--baseline`, `--reward_type`, ...); see
`discritune-trl train --help`. As in TRL's scripts, `--config recipe.yaml` reads any of them from a
YAML file (flags on the command line win); `examples/recipes/` holds the paper's settings:

    accelerate launch examples/finetune_clipcap.py --config examples/recipes/clipcap_coco.yaml

Without `--dataset_name` the world's settings (`discritune_trl.world.WORLD_TRAINING_DEFAULTS`) are the defaults,
below the recipe and the flags (`--max-steps 5` means 5 steps); flags that only apply to your own data or
checkpoints (`--model_name_or_path`, the retriever flags, ...) are refused there, naming the flag.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field

import trl
import yaml
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.utils import cached_file
from trl import ModelConfig, TrlParser

from ..models.auto import POLICY_MAPPING, load_policy
from ..models.blip import BlipPolicy
from ..models.clipcap import ClipCapPolicy
from ..models.policy import CaptioningPolicy
from ..models.vlm import VLMPolicy
from ..trainer import DiscriTuneConfig, DiscriTuneTrainer
from ..utils.data import load_image_dataset
from ..world import WORLD_TRAINING_DEFAULTS, WorldConfig, run_world_job
from .arguments import RetrieverArguments, build_retriever, lora_config, refuse_given


DEFAULT_OUTPUT_DIR = "outputs/discritune-clipcap"


@dataclass
class ScriptArguments(trl.ScriptArguments):
    """Data (TRL's `ScriptArguments`, plus the fields below). Without `dataset_name` the embedded synthetic world is
    used. `dataset_name`: a Hub dataset, a folder saved with `save_to_disk`, an image folder with a
    `metadata.jsonl`, or WebDataset `.tar` shards (a folder, a folder with one subfolder per split, or a glob; see
    `load_image_dataset`); `dataset_test_split` may be empty (no evaluation); `dataset_streaming` streams the train
    split (needs `--max_steps`)."""

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
class ClipCapArguments:
    """For an original ClipCap `.pt` file only (`--model_name_or_path weights.pt`): its tokenizer and image encoder."""

    clipcap_tokenizer: str = field(default="gpt2", metadata={"help": "GPT-2 tokenizer for an original .pt file."})
    clip_model_name: str = field(default="ViT-B-32", metadata={"help": "ClipCap's open_clip image encoder."})
    clip_pretrained: str | None = field(default="openai", metadata={"help": "Its open_clip pretrained tag."})
    clip_checkpoint: str | None = field(default=None, metadata={"help": "Or a local open_clip checkpoint."})


def build_policy(model_args: ModelConfig, clipcap_args: ClipCapArguments) -> CaptioningPolicy:
    """The captioner `--model_name_or_path` names, its class read from the checkpoint (see the module docstring)."""
    path = model_args.model_name_or_path
    if path is None:
        raise ValueError(
            "--model_name_or_path is required with --dataset_name (a saved folder or a ClipCap .pt file)."
        )
    if path.endswith(".pt"):
        return ClipCapPolicy.from_original_checkpoint(
            path,
            tokenizer=clipcap_args.clipcap_tokenizer,
            clip_model_name=clipcap_args.clip_model_name,
            clip_pretrained=None if clipcap_args.clip_checkpoint else clipcap_args.clip_pretrained,
            clip_checkpoint_path=clipcap_args.clip_checkpoint,
        )
    refuse_given(clipcap_args, [item for item in vars(clipcap_args)], "applies to an original ClipCap .pt file only.")
    config_file = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
    model_type = None
    if config_file is not None:
        with open(config_file) as handle:
            model_type = json.load(handle).get("model_type")
    if model_type == "blip":  # a transformers BLIP checkpoint (e.g. Salesforce/blip-image-captioning-base)
        return BlipPolicy.from_pretrained(path)
    if model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and model_type not in POLICY_MAPPING:
        # a plain prompted VLM (e.g. SmolVLM), asked VLMPolicyConfig's default prompt; examples/finetune_vlm.py sets
        # the prompt and LoRA on the language model by default
        return VLMPolicy.from_vlm_pretrained(path)
    if config_file is not None and model_type not in POLICY_MAPPING:
        raise ValueError(
            f"--model_name_or_path {path}: model_type={model_type!r} is not a captioner this library trains "
            f"(policies: {sorted(POLICY_MAPPING)}, or a transformers BLIP checkpoint). Wrap another transformers "
            "captioner with HFCaptionerPolicy.from_captioner(...) and save_pretrained it first."
        )
    return load_policy(path)


def policy_class_of(policy: CaptioningPolicy) -> type[CaptioningPolicy]:
    """The policy's class, under LoRA adapters loaded with it."""
    base = getattr(policy, "get_base_model", None)
    return type(base() if base is not None else policy)


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
    "max_eval_samples", "cross_domain_eval", "ignore_bias_buffers", "model_name_or_path", "clipcap_tokenizer",
    "clip_model_name", "clip_pretrained", "clip_checkpoint", "retriever_model_name", "retriever_pretrained",
    "retriever_checkpoint", "retriever_model_cfg", "retriever_transformers_model",
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


def make_parser(world: bool, prog: str | None = None) -> TrlParser:
    """The parser, with the embedded world's settings as its defaults when `world` (so `--help` shows them)."""
    world_defaults = ", ".join(f"{name}={value!r}" for name, value in WORLD_TRAINING_DEFAULTS.items())
    parser = TrlParser(
        (ScriptArguments, DiscriTuneConfig, ModelConfig, RetrieverArguments, ClipCapArguments),
        allow_abbrev=False,
        prog=prog,
        description=(
            "DiscriTune a captioner against a frozen CLIP retriever. Without --dataset_name (on the command "
            "line or in --config) the embedded synthetic world runs (discritune_trl.world), with these defaults: "
            f"{world_defaults}; a --config recipe and the flags override them, and flags that only apply to your "
            "own data or checkpoints are refused. The defaults shown below are "
            + ("the world's." if world else "the paper's (run --help without --dataset_name for the world's).")
        ),
    )
    parser.set_defaults_with_config(output_dir=DEFAULT_OUTPUT_DIR, **(WORLD_TRAINING_DEFAULTS if world else {}))
    return parser


def parse_arguments(
    argv: list[str] | None = None, prog: str | None = None
) -> tuple[ScriptArguments, DiscriTuneConfig, ModelConfig, RetrieverArguments, ClipCapArguments]:
    """`(script_args, training_args, model_args, retriever_args, clipcap_args)` from the command line and
    `--config recipe.yaml` (TRL's `TrlParser`: the YAML replaces the defaults, the command line overrides the YAML).
    Without a `dataset_name`, the defaults below both are :data:`~discritune_trl.world.WORLD_TRAINING_DEFAULTS`, and
    a flag that cannot apply to the world raises."""
    argv = sys.argv[1:] if argv is None else list(argv)
    world = world_is_used(argv)
    parsed = make_parser(world, prog).parse_args_and_config(argv)
    if world:
        reason = (
            "does not apply to the embedded world, which runs without --dataset_name with its own ClipCap, "
            "retriever and splits: give --dataset_name to use it, or drop the flag."
        )
        for args in parsed:
            if not isinstance(args, DiscriTuneConfig):
                refuse_given(args, WORLD_IGNORES, reason)
    return parsed


def main(
    script_args: ScriptArguments,
    training_args: DiscriTuneConfig,
    model_args: ModelConfig,
    retriever_args: RetrieverArguments,
    clipcap_args: ClipCapArguments,
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
            peft_config=lora_config(model_args, ClipCapPolicy),
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
    policy = build_policy(model_args, clipcap_args)
    trainer = DiscriTuneTrainer(
        model=policy,
        reward_model=build_retriever(retriever_args),
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        peft_config=lora_config(model_args, policy_class_of(policy)),
    )
    metrics = {}
    if eval_dataset is not None:
        metrics["before"] = trainer.evaluate()  # logged as eval metrics at step 0 (TensorBoard: eval/* at 0)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if eval_dataset is not None:
        metrics["after"] = trainer.evaluate()
    trainer.save_model(training_args.output_dir, dataset_name=script_args.dataset_name)  # the card names it
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
