"""The main job on the embedded world: build or load it, DiscriTune the MLE captioner, evaluate before and after.

`examples/finetune_clipcap.py` with no `--dataset_name` calls :func:`run_world_job`. It uses the unchanged
`DiscriTuneTrainer`; only the hyper-parameters differ from the paper's (small models learn at larger learning
rates in few steps): :data:`WORLD_TRAINING_DEFAULTS`, applied to every field the command line did not set.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..evaluation.retrieval import encode_captions
from ..trainer import DiscriTuneConfig, DiscriTuneTrainer
from ..trainer.model_card import write_model_card
from .build import WorldConfig, load_or_build_world
from .report import plot_caption_grid, plot_training_curves, results_markdown, split_results, write_results


TEST_SPLITS = ("in_domain", "shifted")

# DiscriTune's settings for the world (docs/world.md says how they were chosen). Paper values otherwise:
# greedy decoding, running-mean baseline, log-prob reward, in-batch distractors, constant learning rate.
WORLD_TRAINING_DEFAULTS: dict[str, Any] = {
    "learning_rate": 2e-5,
    "per_device_train_batch_size": 100,
    "per_device_eval_batch_size": 250,
    "max_steps": 400,
    "max_new_tokens": 20,
    "logging_steps": 10,
    "save_strategy": "no",
    "report_to": [],
    "eval_num_beams": 5,
}


def apply_world_defaults(args: DiscriTuneConfig, given_flags: set[str] | frozenset[str] = frozenset()) -> None:
    """Set :data:`WORLD_TRAINING_DEFAULTS` on `args`, except the fields named in `given_flags` (set by the user)."""
    for name, value in WORLD_TRAINING_DEFAULTS.items():
        if name not in given_flags:
            setattr(args, name, value)


def run_world_job(
    args: DiscriTuneConfig,
    given_flags: set[str] | frozenset[str] = frozenset(),
    cache_dir: str | None = None,
    start: float | None = None,
    world_config: WorldConfig | None = None,
) -> dict[str, Any]:
    """Build or load the world, run DiscriTune, evaluate both test splits before and after, write the report.

    Writes to `args.output_dir`: the fine-tuned policy with its model card, `results.json`, `results.md`,
    `training_curves.png` and `captions_before_after.png`. Returns the results.

    Args:
        args: the trainer's config; fields not in `given_flags` take :data:`WORLD_TRAINING_DEFAULTS`.
        given_flags: names of the fields the user set (on the command line or in a `--config` recipe).
        cache_dir: where worlds are cached (default: `default_cache_dir()`).
        start: the job's start time, for `runtime_seconds` (default: now).
        world_config: which world (default: `WorldConfig()`, the documented one).
    """
    start = time.time() if start is None else start
    apply_world_defaults(args, given_flags)
    world = load_or_build_world(cache_dir, world_config)
    data = world.load_dataset()
    retriever = world.load_retriever()
    # The trainer builds the reward model from `args` (build_reward_model), with num_hard_negatives > 0 mining
    # distractors among the training images (Appendix D.2), as the examples do.
    trainer = DiscriTuneTrainer(
        model=world.load_captioner(), reward_model=retriever, args=args, train_dataset=data["train"]
    )
    before = {
        split: trainer.caption_dataset(data[split], description=f"Captioning {split}, before") for split in TEST_SPLITS
    }
    trainer.train()
    after = {
        split: trainer.caption_dataset(data[split], description=f"Captioning {split}, after") for split in TEST_SPLITS
    }

    results: dict[str, Any] = {}
    for split in TEST_SPLITS:
        (before_texts, before_embeds, image_embeds), (after_texts, after_embeds, _) = before[split], after[split]
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
            "human": encode_captions(retriever, texts["human"]),
            "descriptive": encode_captions(retriever, texts["descriptive"]),
        }
        results[split] = split_results(
            texts, text_embeds, image_embeds.cpu(), references, args.eval_num_candidates, args.eval_seed
        )
    results["runtime_seconds"] = time.time() - start
    results["world"] = world.root
    results["training"] = {
        name: getattr(args, name) for name in sorted(WORLD_TRAINING_DEFAULTS) if name != "report_to"
    }

    trainer.save_model(args.output_dir)
    if trainer.is_world_process_zero():
        write_model_card(
            trainer,
            args.output_dir,
            dataset_name=f"the embedded synthetic world (`discritune_trl.world`, {world.root})",
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
            [before[split][0][i] for split, i in grid],
            [after[split][0][i] for split, i in grid],
            os.path.join(args.output_dir, "captions_before_after.png"),
        )
        print(results_markdown(results))
        print(f"Fine-tuned policy and model card: {args.output_dir}")
        for name, path in paths.items():
            print(f"{name:>9}: {path}")
    return results
