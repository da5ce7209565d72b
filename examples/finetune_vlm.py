"""DiscriTune a prompted vision-language model (SmolVLM / Idefics3, Qwen2-VL, LLaVA...) with LoRA on its language model.

Offline with no arguments: a tiny random Idefics3 (SmolVLM's architecture) captions a few generated images and is
fine-tuned for a few steps against a tiny random SigLIP retriever. It runs in seconds on a CPU (a random model learns
nothing useful; the plumbing is what runs).

A real pairing, when connected (or with the weights in the Hugging Face cache), is the recipe
`examples/recipes/smolvlm_coco.yaml`:

    accelerate launch examples/finetune_vlm.py --config examples/recipes/smolvlm_coco.yaml

`--model_name_or_path` is a plain vision-language model (Hub id or folder, loaded with `AutoModelForImageTextToText`
and `AutoProcessor`) or a folder saved by `VLMPolicy.save_pretrained`. `--retriever_name_or_path` is a transformers
CLIP / SigLIP / SigLIP2 model (`TransformersCLIPRetriever`); `--retriever_model` an open_clip architecture instead.
See `docs/vlm.md`.
"""

from __future__ import annotations

import json
import os
import resource
from dataclasses import dataclass, field

import datasets
from trl import TrlParser

from discritune_trl.models import load_policy
from discritune_trl.models.vlm import DEFAULT_VLM_PROMPT, VLMPolicy, VLMPolicyConfig, vlm_lora_config
from discritune_trl.retrievers import OpenCLIPRetriever, TransformersCLIPRetriever
from discritune_trl.testing.blip import random_images
from discritune_trl.testing.retrievers import tiny_transformers_clip_retriever
from discritune_trl.testing.vlm import tiny_vlm
from discritune_trl.trainer import DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.utils.data import load_image_dataset


@dataclass
class ScriptArguments:
    """What to fine-tune, on what, against which retriever."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Vision-language model (Hub id or folder) or saved VLMPolicy; a tiny random Idefics3 if omitted."
        },
    )
    prompt: str = field(default=DEFAULT_VLM_PROMPT, metadata={"help": "The user turn sent with each image."})
    stop_at_full_stop: bool = field(
        default=True, metadata={"help": "End captions at the first full stop (the paper), not only at end of turn."}
    )
    use_lora: bool = field(
        default=True,
        metadata={"help": "Train LoRA adapters on the language model (--use_lora false: full fine-tuning)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    train_vision_encoder: bool = field(
        default=False, metadata={"help": "Also train the vision tower (full fine-tuning)."}
    )
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset (Hub name or local folder); a few generated images when omitted."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    retriever_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "transformers CLIP/SigLIP/SigLIP2 retriever, folder or Hub id (e.g. google/siglip2-base-patch16-224); "
            "tiny if omitted."
        },
    )
    retriever_model: str | None = field(
        default=None, metadata={"help": "open_clip architecture instead of --retriever_name_or_path (e.g. ViT-B-32)."}
    )
    retriever_pretrained: str | None = field(default="openai", metadata={"help": "open_clip pretrained tag."})


def build_policy(script_args: ScriptArguments) -> VLMPolicy:
    """A saved VLMPolicy folder is loaded as it is; anything else is wrapped with `VLMPolicy.from_vlm_pretrained`."""
    options = dict(
        stop_at_full_stop=script_args.stop_at_full_stop, freeze_vision_encoder=not script_args.train_vision_encoder
    )
    if script_args.model_name_or_path is None:
        return VLMPolicy.from_vlm(*tiny_vlm("idefics3"), prompt=script_args.prompt, **options)
    config_file = os.path.join(script_args.model_name_or_path, "config.json")
    if os.path.isfile(config_file):
        with open(config_file) as handle:
            if json.load(handle).get("model_type") == VLMPolicyConfig.model_type:
                return load_policy(script_args.model_name_or_path)
    return VLMPolicy.from_vlm_pretrained(script_args.model_name_or_path, prompt=script_args.prompt, **options)


def build_retriever(script_args: ScriptArguments):
    if script_args.retriever_model is not None:
        return OpenCLIPRetriever(script_args.retriever_model, pretrained=script_args.retriever_pretrained)
    if script_args.retriever_name_or_path is not None:
        return TransformersCLIPRetriever.from_pretrained(script_args.retriever_name_or_path)
    return tiny_transformers_clip_retriever(model_type="siglip")


def parse_arguments(argv: list[str] | None = None) -> tuple[ScriptArguments, DiscriTuneConfig]:
    """The arguments from the command line and `--config recipe.yaml` (TRL's `TrlParser`; flags override the YAML)."""
    return TrlParser((ScriptArguments, DiscriTuneConfig)).parse_args_and_config(argv)


def main(script_args: ScriptArguments, training_args: DiscriTuneConfig) -> None:
    if script_args.model_name_or_path is None:  # seconds on a CPU, and a learning rate that moves a random model
        training_args.max_steps = training_args.max_steps if training_args.max_steps > 0 else 2
        training_args.per_device_train_batch_size = min(training_args.per_device_train_batch_size, 4)
        training_args.learning_rate = max(training_args.learning_rate, 1e-3)
        training_args.max_completion_length = min(training_args.max_completion_length, 8)
        training_args.report_to = []
    if script_args.train_vision_encoder and script_args.use_lora:
        raise ValueError("--train_vision_encoder needs full fine-tuning: add --use_lora false.")

    policy = build_policy(script_args)
    if script_args.dataset_name is None:
        train_dataset = datasets.Dataset.from_dict({training_args.image_column: random_images(8)})
        train_dataset = train_dataset.cast_column(training_args.image_column, datasets.Image())
    else:
        train_dataset = load_image_dataset(script_args.dataset_name, script_args.dataset_split)
    peft_config = (
        vlm_lora_config(r=script_args.lora_r, lora_alpha=script_args.lora_alpha) if script_args.use_lora else None
    )

    trainer = DiscriTuneTrainer(
        model=policy,
        reward_model=build_retriever(script_args),
        args=training_args,
        train_dataset=train_dataset,
        peft_config=peft_config,
    )
    output = trainer.train()
    seconds_per_step = output.metrics["train_runtime"] / max(1, output.global_step)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"{output.global_step} steps, {seconds_per_step:.2f} s/step, peak memory (max RSS) {peak_mib:.0f} MiB")
    trainer.save_model(training_args.output_dir)
    print(f"Fine-tuned policy saved to {training_args.output_dir}; logs in {training_args.output_dir}/")
    if peft_config is not None and trainer.is_world_process_zero():
        # The adapters' base is the wrapped model, not a saved VLMPolicy: also save the merged policy, which
        # `load_policy` loads alone.
        merged = os.path.join(training_args.output_dir, "merged")
        trainer.model.merge_and_unload().save_pretrained(merged)
        print(f"LoRA merged into the policy, saved to {merged}")


if __name__ == "__main__":
    main(*parse_arguments())
