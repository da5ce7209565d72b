"""DiscriTune a BLIP captioner (paper Section 4.2.3: BLIP, COCO, one epoch) or any transformers captioner.

Offline with no arguments: a tiny random BLIP, fine-tuned on images of the embedded world against the world's
retriever when the world is in its cache (built by `examples/finetune_clipcap.py` or
`python -m discritune_trl.world build`), else on a few generated images against a tiny random open_clip
retriever. It runs end to end in seconds on a CPU (a random BLIP learns nothing useful in a few steps; the
plumbing is what runs).

The paper's BLIP setting, when connected (or with the weights in the Hugging Face cache):

    accelerate launch examples/finetune_blip.py \
        --model_name_or_path Salesforce/blip-image-captioning-base \
        --dataset_name <a COCO-style image dataset> --dataset_split train \
        --retriever_model ViT-B-32 --retriever_pretrained openai \
        --num_train_epochs 1 --per_device_train_batch_size 100 --output_dir blip-discritune

Another captioner: `--captioner_class VisionEncoderDecoderModel --model_name_or_path <a ViT-GPT2 folder>` (or
`GitForCausalLM`, or any class `HFCaptionerPolicy` supports); its processor is loaded from the same folder.
The paper's setting is also a recipe: `--config examples/recipes/blip_coco.yaml` (flags override it).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets
import transformers
from transformers import AutoImageProcessor, AutoTokenizer
from trl import TrlParser

from discritune_trl.models.blip import DEFAULT_BLIP_PROMPT, BlipPolicy
from discritune_trl.models.hf_captioner import HFCaptionerPolicy
from discritune_trl.retrievers import OpenCLIPRetriever
from discritune_trl.testing.blip import random_images, tiny_blip
from discritune_trl.testing.retrievers import tiny_open_clip_retriever
from discritune_trl.trainer import DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.utils.data import load_image_dataset
from discritune_trl.world import cached_world


@dataclass
class ScriptArguments:
    """What to fine-tune, on what, against which retriever."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Captioner folder or Hub name; a tiny random BLIP when omitted."}
    )
    captioner_class: str = field(
        default="BlipForConditionalGeneration",
        metadata={"help": "transformers class of the captioner; anything but BLIP goes through HFCaptionerPolicy."},
    )
    prompt: str | None = field(
        default=None, metadata={"help": f"Captioning prompt; {DEFAULT_BLIP_PROMPT!r} for BLIP, '' otherwise."}
    )
    train_vision_encoder: bool = field(default=False, metadata={"help": "Also train the captioner's image encoder."})
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters on the text decoder (BLIP only)."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Dataset (Hub name or local folder); a few generated images when omitted."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to train on."})
    retriever_model: str | None = field(
        default=None, metadata={"help": "open_clip architecture (ViT-B-32 in the paper); tiny random when omitted."}
    )
    retriever_pretrained: str | None = field(default="openai", metadata={"help": "open_clip pretrained tag."})


def build_policy(script_args: ScriptArguments):
    """The policy to fine-tune: BlipPolicy for BLIP, HFCaptionerPolicy for any other supported captioner."""
    freeze = not script_args.train_vision_encoder
    is_blip = script_args.captioner_class == "BlipForConditionalGeneration"
    prompt = script_args.prompt if script_args.prompt is not None else (DEFAULT_BLIP_PROMPT if is_blip else "")
    if script_args.model_name_or_path is None:
        return BlipPolicy.from_blip(*tiny_blip(), prompt=prompt, freeze_vision_encoder=freeze)
    if is_blip:
        return BlipPolicy.from_pretrained(script_args.model_name_or_path, prompt=prompt, freeze_vision_encoder=freeze)
    model = getattr(transformers, script_args.captioner_class).from_pretrained(script_args.model_name_or_path)
    return HFCaptionerPolicy.from_captioner(
        model,
        image_processor=AutoImageProcessor.from_pretrained(script_args.model_name_or_path),
        tokenizer=AutoTokenizer.from_pretrained(script_args.model_name_or_path),
        prompt=prompt,
        freeze_vision_encoder=freeze,
    )


def parse_arguments(argv: list[str] | None = None) -> tuple[ScriptArguments, DiscriTuneConfig]:
    """The arguments from the command line and `--config recipe.yaml` (TRL's `TrlParser`; flags override the YAML)."""
    return TrlParser((ScriptArguments, DiscriTuneConfig)).parse_args_and_config(argv)


def main(script_args: ScriptArguments, training_args: DiscriTuneConfig) -> None:
    tiny = script_args.model_name_or_path is None
    if tiny:  # seconds on a CPU, and a learning rate that visibly moves a random model
        training_args.max_steps = training_args.max_steps if training_args.max_steps > 0 else 4
        training_args.per_device_train_batch_size = min(training_args.per_device_train_batch_size, 8)
        training_args.learning_rate = max(training_args.learning_rate, 1e-3)
        training_args.report_to = []

    policy = build_policy(script_args)
    world = cached_world() if script_args.dataset_name is None and script_args.retriever_model is None else None
    if world is not None:
        train_dataset = world.load_dataset()["train"].select(range(256))
        retriever = world.load_retriever()
        print(f"Using the embedded world in {world.root}")
    else:
        if script_args.dataset_name is None:
            train_dataset = datasets.Dataset.from_dict({training_args.image_column: random_images(32)})
            train_dataset = train_dataset.cast_column(training_args.image_column, datasets.Image())
        else:
            train_dataset = load_image_dataset(script_args.dataset_name, script_args.dataset_split)
        if script_args.retriever_model is None:
            retriever = tiny_open_clip_retriever()
        else:
            retriever = OpenCLIPRetriever(script_args.retriever_model, pretrained=script_args.retriever_pretrained)
    peft_config = None
    if script_args.use_lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules=BlipPolicy.lora_target_modules)

    trainer = DiscriTuneTrainer(
        model=policy, reward_model=retriever, args=training_args, train_dataset=train_dataset, peft_config=peft_config
    )
    trainer.train()
    trainer.save_model(training_args.output_dir, dataset_name=script_args.dataset_name)  # the card names it
    print(f"Fine-tuned policy saved to {training_args.output_dir}; logs in {training_args.output_dir}/")


if __name__ == "__main__":
    main(*parse_arguments())
