"""The main job's report: `results.json`, `results.md` (the paper's Tables 1-3 and 7 layouts) and two PNGs."""

from __future__ import annotations

import json
import os
import shutil
import textwrap
from typing import Any

import torch

from ..evaluation.captioning import caption_metrics
from ..evaluation.report import markdown_metric_blocks, markdown_table
from ..evaluation.retrieval import precision_at_1
from .captions import color_word_rate


SPLIT_TITLES = {"in_domain": "In-domain test", "shifted": "Shifted-domain test"}
ROW_TITLES = {
    "before": "ClipCap-World (MLE, before)",
    "after": "DiscriTune-World (after)",
    "human": "Human captions",
    "descriptive": "Descriptive text",
}


def split_results(
    captions: dict[str, list[str]],
    text_embeds: dict[str, torch.Tensor],
    image_embeds: torch.Tensor,
    references: list[list[str]],
    num_candidates: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """Metrics of one test split.

    Args:
        captions: `{"before": [...], "after": [...], "human": [...], "descriptive": [...]}`, one text per image.
        text_embeds: the retriever's embeddings of those texts, same keys.
        image_embeds: `[N, D]` the retriever's image embeddings.
        references: the reference captions of each image (for BLEU-4 and CIDEr).
    """
    num_candidates = min(num_candidates, image_embeds.shape[0])
    p_at_1 = {
        name: 100.0 * precision_at_1(embeds, image_embeds, num_candidates=num_candidates, seed=seed)
        for name, embeds in text_embeds.items()
    }
    tokenizer = "ptb" if shutil.which("java") else "simple"
    nlg = {
        name: caption_metrics(captions[name], references, metrics=("bleu", "cider"), tokenizer=tokenizer)
        for name in ("before", "after")
    }
    return {
        "num_images": int(image_embeds.shape[0]),
        "num_candidates": num_candidates,
        "p_at_1": p_at_1,
        "color_word_rate": {name: color_word_rate(captions[name]) for name in ("before", "after", "human")},
        "bleu_4": {name: 100.0 * nlg[name]["bleu_4"] for name in nlg},
        "cider": {name: 100.0 * nlg[name]["cider"] for name in nlg},
        "metrics_tokenizer": tokenizer,
    }


def results_markdown(results: dict[str, Any]) -> str:
    """`results.md`: retrieval (Table 1), caption quality (Tables 2-3) and colour-word rates (Table 7's finding)."""
    splits = [split for split in SPLIT_TITLES if split in results]
    retrieval = {
        ROW_TITLES[name]: {SPLIT_TITLES[split]: results[split]["p_at_1"][name] for split in splits}
        for name in ROW_TITLES
    }
    quality = {
        SPLIT_TITLES[split]: {
            ROW_TITLES[name]: {"bleu_4": results[split]["bleu_4"][name], "cider": results[split]["cider"][name]}
            for name in ("before", "after")
        }
        for split in splits
    }
    colors = {
        ROW_TITLES[name]: {SPLIT_TITLES[split]: results[split]["color_word_rate"][name] for split in splits}
        for name in ("before", "after", "human")
    }
    candidates = results[splits[0]]["num_candidates"]
    decodings = []
    if all("greedy_p_at_1" in results[split] for split in splits):
        by_decoding = {
            f"{ROW_TITLES[name]}, {label}": {SPLIT_TITLES[split]: results[split][key][name] for split in splits}
            for name in ("before", "after")
            for label, key in (("beam search", "p_at_1"), ("greedy", "greedy_p_at_1"))
        }
        decodings = [
            "P@1 by decoding: training decodes greedily, the evaluation above with beam search.",
            "",
            markdown_table(by_decoding, scale=1.0, digits=1),
        ]
    return "\n".join(
        [
            "# DiscriTune on the embedded world",
            "",
            f"## Text-to-image retrieval P@1 with {candidates} candidates (Table 1 layout)",
            "",
            markdown_table(retrieval, scale=1.0, digits=1),
            *decodings,
            *_training_notes(results),
            "## Caption quality against the reference captions (Tables 2-3 layout)",
            "",
            markdown_metric_blocks(quality, columns=("bleu_4", "cider"), scale=1.0, digits=2, heading_level=3),
            "## Share of captions naming a colour (the paper's Table 7 finding)",
            "",
            markdown_table(colors, scale=100.0, digits=1),
            f"Runtime: {results.get('runtime_seconds', float('nan')):.0f} s.",
            "",
        ]
    )


def _training_notes(results: dict[str, Any]) -> list[str]:
    """The checkpoint kept and the collapse alarms, as lines of `results.md`."""
    lines = []
    selection = results.get("selection")
    if selection:
        curve = ", ".join(f"{step}: {value:.1f}" for step, value in sorted(selection["validation"].items()))
        lines += [
            f"Checkpoint kept: step {selection['kept_step']}, the best validation {selection['metric']} "
            f"(per step: {curve}).",
            "",
        ]
    for alarm in results.get("collapse_alarms", []):
        lines += [
            f"Collapse alarm at step {alarm['step']}: {alarm['metric']} {alarm['value']:.3f}, running level "
            f"{alarm['level']:.3f}.",
            "",
        ]
    return lines


def plot_training_curves(log_history: list[dict[str, Any]], path: str) -> str:
    """Reward and in-batch retrieval accuracy over training steps, from `trainer.state.log_history`."""
    from matplotlib.figure import Figure  # the object-oriented API: no pyplot state, no process-wide backend

    # "reward" (GRPO's name); histories written before the rename hold "reward/mean".
    key = "reward" if any("reward" in entry for entry in log_history) else "reward/mean"
    logs = [entry for entry in log_history if key in entry]
    steps = [entry["step"] for entry in logs]
    figure = Figure(figsize=(10, 3.6))
    left, right = figure.subplots(1, 2)
    left.plot(steps, [entry[key] for entry in logs], color="tab:blue")
    left.set(xlabel="step", ylabel="reward (log-prob of the target)", title="Reward")
    right.plot(steps, [100 * entry["retrieval/accuracy"] for entry in logs], color="tab:green")
    right.set(xlabel="step", ylabel="% captions retrieving their image", title="In-batch retrieval accuracy")
    for axis in (left, right):
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def plot_caption_grid(images: list, before: list[str], after: list[str], path: str, columns: int = 4) -> str:
    """Test images with their captions before and after DiscriTune."""
    from matplotlib.figure import Figure  # the object-oriented API: no pyplot state, no process-wide backend

    rows = (len(images) + columns - 1) // columns
    figure = Figure(figsize=(3.6 * columns, 4.4 * rows))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, old, new in zip(axes.flat, images, before, after):
        axis.imshow(image.convert("RGB").resize((128, 128), resample=0))
        text = textwrap.fill(f"before: {old}", 44) + "\n" + textwrap.fill(f"after: {new}", 44)
        axis.text(0.0, -0.04, text, transform=axis.transAxes, fontsize=7, va="top", ha="left", wrap=False)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.98, bottom=0.08, wspace=0.08, hspace=0.75)
    figure.savefig(path, dpi=120)
    return path


def write_results(results: dict[str, Any], output_dir: str) -> dict[str, str]:
    """Write `results.json` and `results.md`; return their paths."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {"json": os.path.join(output_dir, "results.json"), "markdown": os.path.join(output_dir, "results.md")}
    with open(paths["json"], "w") as handle:
        json.dump(results, handle, indent=2)
    with open(paths["markdown"], "w") as handle:
        handle.write(results_markdown(results))
    return paths
