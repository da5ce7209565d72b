"""The main job on the embedded world: build or load it, DiscriTune the MLE captioner, evaluate before and after.

`examples/finetune_clipcap.py` with no `--dataset_name` calls :func:`run_world_job`. It uses the unchanged
`DiscriTuneTrainer`; only the hyper-parameters differ from the paper's (small models learn at larger learning
rates in few steps): :data:`WORLD_TRAINING_DEFAULTS`. The command line applies them as the parser's defaults (below
a `--config` recipe and the flags, which both win); from Python, :func:`world_training_config` does the same.

As the paper tuned its settings on held-out data, the job holds out the last :data:`WORLD_VALIDATION_IMAGES`
training images as a validation split, evaluates retrieval P@1 on it at the start and every 50 steps, and keeps the
best policy (the initial policy when no checkpoint beats it), so that a run that collapses late (the collapse alarm
warns of it) does not end with the collapsed policy. `--eval_strategy no --eval_on_start false --save_strategy no
--load_best_model_at_end false` trains on every training image and keeps the last step's policy. Training decodes
greedily and the evaluation uses beam search: the report gives P@1 for both.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import time
from typing import Any

import datasets
from peft import PeftConfig, get_peft_model

from ..evaluation.retrieval import encode_captions, precision_at_1
from ..trainer import DiscriTuneConfig, DiscriTuneTrainer
from ..trainer.model_card import write_model_card
from .build import WorldConfig, load_or_build_world
from .report import plot_caption_grid, plot_training_curves, results_markdown, split_results, write_results


logger = logging.getLogger(__name__)

TEST_SPLITS = ("in_domain", "shifted")

# Training images held out as the validation split that selects the checkpoint.
WORLD_VALIDATION_IMAGES = 500

# DiscriTune's settings for the world (docs/world.md says how they were chosen, with the regime table of
# benchmarks/world_ablations.md). Paper values otherwise: greedy decoding, running-mean baseline, log-prob reward,
# in-batch distractors, constant learning rate, no gradient clipping. The checkpoint is selected on validation P@1
# (beam 5, as reported), evaluated at the start and every 50 steps.
WORLD_TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-5,
    "per_device_train_batch_size": 100,
    "per_device_eval_batch_size": 250,
    "max_steps": 400,
    "max_completion_length": 20,
    "logging_steps": 10,
    "eval_strategy": "steps",
    "eval_steps": 50,
    "eval_on_start": True,
    "save_strategy": "steps",
    "save_steps": 50,
    "save_total_limit": 1,
    "load_best_model_at_end": True,
    "metric_for_best_model": "p_at_1",
    "greater_is_better": True,
    "report_to": [],
    "eval_num_beams": 5,
}


def world_training_config(**fields: Any) -> DiscriTuneConfig:
    """A `DiscriTuneConfig` with :data:`WORLD_TRAINING_DEFAULTS` as its defaults: every field given here wins."""
    return DiscriTuneConfig(**{**WORLD_TRAINING_DEFAULTS, **fields})


def run_world_job(
    args: DiscriTuneConfig,
    cache_dir: str | None = None,
    start: float | None = None,
    world_config: WorldConfig | None = None,
    validation_images: int = WORLD_VALIDATION_IMAGES,
    peft_config: PeftConfig | None = None,
) -> dict[str, Any]:
    """Build or load the world, run DiscriTune, evaluate both test splits before and after, write the report.

    Writes to `args.output_dir`: the fine-tuned policy with its model card, `results.json`, `results.md`,
    `training_curves.png` and `captions_before_after.png`. Returns the results.

    Args:
        args: the trainer's config, used as it is (build it with :func:`world_training_config` for the world's
            defaults). `resume_from_checkpoint` and `push_to_hub` are honoured as in the examples.
        cache_dir: where worlds are cached (default: `default_cache_dir()`).
        start: the job's start time, for `runtime_seconds` (default: now).
        world_config: which world (default: `WorldConfig()`, the documented one).
        validation_images: training images held out to select the checkpoint on (used when `args.eval_strategy`
            is not `"no"`).
        peft_config: train LoRA adapters on the world's ClipCap instead of all its trainable weights.
    """
    start = time.time() if start is None else start
    world = load_or_build_world(cache_dir, world_config)
    data = world.load_dataset()
    train, validation = data["train"], None
    if args.eval_strategy != "no":  # select the checkpoint on held-out training images
        train, validation = split_validation(data["train"], validation_images)
    retriever = world.load_retriever()
    # The trainer builds the reward model from `args` (build_reward_model), with num_hard_negatives > 0 mining
    # distractors among the training images (Appendix D.2), as the examples do.
    trainer = DiscriTuneTrainer(
        model=world.load_captioner(),
        reward_model=retriever,
        args=args,
        train_dataset=train,
        eval_dataset=validation,
        peft_config=peft_config,
    )
    before = {split: _caption(trainer, data[split], f"{split}, before") for split in TEST_SPLITS}
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    selection = _keep_the_initial_policy_if_best(trainer, world, peft_config) if validation is not None else None
    after = {split: _caption(trainer, data[split], f"{split}, after") for split in TEST_SPLITS}

    results: dict[str, Any] = {}
    for split in TEST_SPLITS:
        (before_texts, before_embeds, image_embeds) = before[split]["beam"]
        (after_texts, after_embeds, _) = after[split]["beam"]
        references = data[split]["captions"]
        texts = {
            "before": before_texts,
            "after": after_texts,
            "human": [captions[0] for captions in references],
            "descriptive": data[split]["descriptive"],
        }
        text_embeds = {
            "before": before_embeds,
            "after": after_embeds,
            "human": encode_captions(retriever, texts["human"], disable_tqdm=args.disable_tqdm),
            "descriptive": encode_captions(retriever, texts["descriptive"], disable_tqdm=args.disable_tqdm),
        }
        results[split] = split_results(
            texts, text_embeds, image_embeds.cpu(), references, args.eval_num_candidates, args.eval_seed
        )
        # Training decodes greedily, the evaluation with beam search: both, so that a gap between them shows.
        results[split]["greedy_p_at_1"] = {
            name: 100.0
            * precision_at_1(
                captioned["greedy"][1],
                image_embeds.cpu(),
                min(args.eval_num_candidates, len(image_embeds)),
                seed=args.eval_seed,
            )
            for name, captioned in (("before", before[split]), ("after", after[split]))
        }
    results["selection"] = selection
    alarms = trainer.collapse_alarm.alarms if trainer.collapse_alarm is not None else []
    results["collapse_alarms"] = [dataclasses.asdict(alarm) for alarm in alarms]
    watched = ("reward", "retrieval/accuracy", "completions/mean_length")
    results["training_curves"] = [
        {"step": entry["step"], **{name: entry[name] for name in watched}}
        for entry in trainer.state.log_history
        if "reward" in entry
    ]
    results["runtime_seconds"] = time.time() - start
    results["world"] = world.root
    results["training"] = {
        name: _plain(getattr(args, name)) for name in sorted(WORLD_TRAINING_DEFAULTS) if name != "report_to"
    }
    results["training"]["validation_images"] = len(validation) if validation is not None else 0

    trainer.save_model(args.output_dir)
    dataset_name = f"the embedded synthetic world (`discritune_trl.world`, {world.root})"
    if trainer.is_world_process_zero():
        write_model_card(
            trainer,
            args.output_dir,
            dataset_name=dataset_name,
            tags=trainer._tag_names,
            metrics={f"{split}_p_at_1": results[split]["p_at_1"] for split in TEST_SPLITS},
        )
        paths = write_results(results, args.output_dir)
        paths["curves"] = plot_training_curves(
            trainer.state.log_history, os.path.join(args.output_dir, "training_curves.png")
        )
        grid = [("in_domain", i) for i in range(8)] + [("shifted", i) for i in range(4)]
        paths["captions"] = plot_caption_grid(
            [data[split][i]["image"] for split, i in grid],
            [before[split]["beam"][0][i] for split, i in grid],
            [after[split]["beam"][0][i] for split, i in grid],
            os.path.join(args.output_dir, "captions_before_after.png"),
        )
        print(results_markdown(results))
        print(f"Fine-tuned policy and model card: {args.output_dir}")
        for name, path in paths.items():
            print(f"{name:>9}: {path}")
    if args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset_name)
    return results


def split_validation(train: datasets.Dataset, size: int = WORLD_VALIDATION_IMAGES):
    """`(train, validation)`: the last `size` training images held out (the world's images are independent draws)."""
    if len(train) <= size:
        raise ValueError(f"The world's training split has {len(train)} images; holding out {size} leaves none.")
    return train.select(range(len(train) - size)), train.select(range(len(train) - size, len(train)))


def _caption(trainer: DiscriTuneTrainer, dataset: datasets.Dataset, description: str) -> dict[str, tuple]:
    """`{"beam": (texts, text_embeds, image_embeds), "greedy": (...)}`: the dataset captioned with the evaluation's
    `eval_num_beams` and greedily (the training decoding), embeddings on the CPU."""
    captioned = {}
    for name, num_beams in (("beam", trainer.args.eval_num_beams), ("greedy", 1)):
        texts, text_embeds, image_embeds = trainer.caption_dataset(
            dataset, num_beams=num_beams, description=f"Captioning {description} ({name})"
        )
        captioned[name] = (texts, text_embeds.cpu(), image_embeds.cpu())
    return captioned


def _keep_the_initial_policy_if_best(
    trainer: DiscriTuneTrainer, world, peft_config: PeftConfig | None = None
) -> dict[str, Any]:
    """After `load_best_model_at_end`: if the evaluation at the start beat every checkpoint (the Trainer never
    selects the start), put the initial policy back. Returns the validation P@1 per step and the step kept."""
    metric = f"eval_{trainer.args.metric_for_best_model.removeprefix('eval_')}"
    curve = {int(entry["step"]): entry[metric] for entry in trainer.state.log_history if metric in entry}
    kept = trainer.state.best_global_step if trainer.args.load_best_model_at_end else trainer.state.global_step
    if trainer.args.load_best_model_at_end and len(curve) > 1 and 0 in curve and curve[0] >= max(curve.values()):
        logger.warning(
            "No checkpoint beat the initial policy on the validation split (%s %.1f at the start, best checkpoint "
            "%s): keeping the initial policy.",
            metric,
            curve[0],
            max((value for step, value in curve.items() if step > 0), default=float("nan")),
        )
        initial = world.load_captioner()
        if peft_config is not None:  # fresh adapters compute the initial policy (LoRA's B starts at zero)
            initial = get_peft_model(initial, peft_config)
        initial = initial.to(trainer.accelerator.device)
        trainer.accelerator.unwrap_model(trainer.model).load_state_dict(initial.state_dict())
        kept = 0
    return {"metric": metric, "validation": curve, "kept_step": kept}


def _plain(value: Any) -> Any:
    """A config value as JSON holds it (Trainer's enums are `str` subclasses)."""
    return value.value if isinstance(value, enum.Enum) else value
