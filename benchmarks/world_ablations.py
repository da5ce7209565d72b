"""The paper's ablations (Tables 8, 9 and 13) rerun in miniature on the embedded world, and the regime table.

`tables` (the default): each row is one main-job run (`run_world_job`: the unchanged `DiscriTuneTrainer`, the
world's defaults) with one knob changed, evaluated like the main job (beam 5, P@1 with 100 candidates on 1,000 test
images per split). The report prints each table beside the paper's numbers (the paper's are on
Flickr/COCO/Conceptual Captions with ClipCap and CLIP ViT-B/32; ours on the synthetic world, so only the direction
is comparable).

    python benchmarks/world_ablations.py --output_dir outputs/ablations --report benchmarks/world_ablations.md

Not part of the test suite: 7 training runs of about a minute and a half each on 2 CPU cores.

`regimes`: the main job in each starting regime of the world (`WorldConfig.from_seed(0, regime)`: a vague, a mixed
and a good captioner) for several training seeds and settings (:data:`SETTINGS`: the main job's defaults, and what
they replaced), before and after, in-domain and shifted, with beam-5 and greedy captions, colour rates, the
checkpoint kept, collapse alarms and the training curves. Runs go `--jobs` at a time, each in its own process;
worlds not in the cache are built by the first run that needs one.

    python benchmarks/world_ablations.py regimes --seeds 0 1 --jobs 16 --output_dir outputs/regimes \
        --report benchmarks/world_ablations.md

writes its section of the report (between `<!-- regimes -->` markers, the rest of the file kept) and
`benchmarks/world_regimes.png` (the curves).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

from discritune_trl.world import WORLD_REGIMES, WorldConfig, run_world_job, world_training_config


# (table, row label, DiscriTuneConfig overrides, the paper's P@1 for that row)
RUNS = [
    ("Table 8: REINFORCE baseline", "no baseline", {"baseline": "none"}, "34.3 (Flickr val)"),
    (
        "Table 8: REINFORCE baseline",
        "greedy decoding (w/ beam search)",
        {"baseline": "greedy", "train_decoding": "beam", "num_beams": 5},
        "97.4 (Flickr val)",
    ),
    ("Table 8: REINFORCE baseline", "running mean", {}, "97.8 (Flickr val)"),
    ("Table 9: reward function", "cosine similarity", {"reward_type": "cosine"}, "85.2 (Flickr val)"),
    ("Table 9: reward function", "accuracy", {"reward_type": "accuracy"}, "85.3 (Flickr val)"),
    ("Table 9: reward function", "log probability", {}, "86.2 (Flickr val)"),
    ("Table 13: mined hard distractors", "DiscriTune (random in-batch)", {}, "84.8 / 83.6 (COCO / CC)"),
    ("Table 13: mined hard distractors", "w/ 5 hard distractors", {"num_hard_negatives": 5}, "84.9 / 82.3"),
    ("Table 13: mined hard distractors", "w/ 10 hard distractors", {"num_hard_negatives": 10}, "85.2 / 82.0"),
]


# The regime table's settings: DiscriTuneConfig overrides of the main job's defaults (`WORLD_TRAINING_DEFAULTS`).
LAST_STEP = {"eval_strategy": "no", "eval_on_start": False, "save_strategy": "no", "load_best_model_at_end": False}
SETTINGS: dict[str, dict] = {
    "defaults": {},
    "previous-defaults": {"max_grad_norm": 1.0, **LAST_STEP},
    "no-clip-last-step": dict(LAST_STEP),
    "clip-1-selected": {"max_grad_norm": 1.0},
    "lr-1e-5-selected": {"learning_rate": 1e-5},
}
SETTING_NOTES = {
    "defaults": "the main job: learning rate 2e-5, no gradient clipping, checkpoint selected on validation P@1",
    "previous-defaults": "the main job before this table: gradient norm clipped at 1.0, trained on all 10,000 "
    "training images, the last step's policy kept",
    "no-clip-last-step": "no clipping (the paper), the last step's policy kept",
    "clip-1-selected": "gradient norm clipped at 1.0, checkpoint selected on validation P@1",
    "lr-1e-5-selected": "learning rate 1e-5, no clipping, checkpoint selected on validation P@1",
}


def run(overrides: dict, output_dir: str, cache_dir: str | None, world_config: WorldConfig | None = None) -> dict:
    args = world_training_config(output_dir=output_dir, disable_tqdm=True, **overrides)
    return run_world_job(args, cache_dir=cache_dir, world_config=world_config)


def report(results: dict[str, dict], before: dict, command: str) -> str:
    lines = [
        "# The paper's ablations on the embedded world",
        "",
        f"Made by `{command}` (seed 0; each run is the main job with one setting changed).",
        "P@1 with 100 candidates, beam-5 captions of the 1,000 test images of each split. Before fine-tuning the",
        f"MLE ClipCap scores {before['in_domain']:.1f} in-domain and {before['shifted']:.1f} on the shifted domain.",
        "The paper's column is its own setting (real ClipCap + CLIP ViT-B/32 on Flickr / COCO / Conceptual",
        "Captions): compare directions, not values.",
        "",
    ]
    for table in dict.fromkeys(name for name, _, _, _ in RUNS):
        lines += [f"## {table}", "", "| setting | in-domain P@1 | shifted P@1 | paper P@1 |", "|---|---:|---:|---:|"]
        for name, label, overrides, paper in RUNS:
            if name == table:
                p_at_1 = results[json.dumps(overrides, sort_keys=True)]
                lines.append(f"| {label} | {p_at_1['in_domain']:.1f} | {p_at_1['shifted']:.1f} | {paper} |")
        lines.append("")
    lines += [
        "Notes: the greedy baseline trains on beam-5 captions, as the paper's Table 8 row does. The paper keeps 100",
        "candidates with k of them mined; here the k mined training images are added to the 100 in-batch ones",
        "(`DiscriminativeRewardModel(num_hard_negatives=k)`, similarity ceiling 0.8).",
        "",
    ]
    return "\n".join(lines)


def run_tables(options: argparse.Namespace) -> None:
    results: dict[str, dict] = {}
    before: dict = {}
    for _, label, overrides, _ in RUNS:
        key = json.dumps(overrides, sort_keys=True)
        if key in results:
            continue
        start = time.time()
        folder = os.path.join(
            options.output_dir, "-".join(f"{k}={v}" for k, v in sorted(overrides.items())) or "default"
        )
        outcome = run(overrides, folder, options.cache_dir)
        results[key] = {split: outcome[split]["p_at_1"]["after"] for split in ("in_domain", "shifted")}
        before = {split: outcome[split]["p_at_1"]["before"] for split in ("in_domain", "shifted")}
        print(f"[ablations] {label}: {results[key]} ({time.time() - start:.0f} s)", flush=True)
    command = (
        "python benchmarks/world_ablations.py --output_dir outputs/ablations --report benchmarks/world_ablations.md"
    )
    text = report(results, before, command)
    write_section(options.report, None, text)
    print(text)


# ---------------------------------------------------------------------------------------------- the regime table

REGIMES_MARKERS = ("<!-- regimes -->", "<!-- /regimes -->")


def write_section(path: str, markers: tuple[str, str] | None, text: str) -> None:
    """Write `text` into `path`: between `markers` (replacing what was there, or appended), or, without markers,
    as the whole file except the marked regime section, which is kept."""
    old = open(path).read() if os.path.exists(path) else ""
    start, end = REGIMES_MARKERS
    section = old[old.index(start) : old.index(end) + len(end)] if start in old and end in old else ""
    if markers is None:
        new = text.rstrip("\n") + ("\n\n" + section if section else "") + "\n"
    else:
        block = f"{start}\n{text.rstrip()}\n{end}"
        new = old.replace(section, block) if section else old.rstrip("\n") + "\n\n" + block + "\n"
    with open(path, "w") as handle:
        handle.write(new)


def run_folder(output_dir: str, regime: str, seed: int, setting: str) -> str:
    return os.path.join(output_dir, f"{regime}-seed{seed}-{setting}")


def run_one(options: argparse.Namespace) -> None:
    """One cell of the regime table, in this process: the main job on `regime` with `setting`, training seed `seed`."""
    overrides = {**SETTINGS[options.setting], "seed": options.seed}
    folder = run_folder(options.output_dir, options.regime, options.seed, options.setting)
    run(overrides, folder, options.cache_dir, WorldConfig.from_seed(0, options.regime))


def run_regimes(options: argparse.Namespace) -> None:
    cells = [
        (regime, seed, setting) for setting in options.settings for regime in options.regimes for seed in options.seeds
    ]
    os.makedirs(options.output_dir, exist_ok=True)

    def launch(cell: tuple[str, int, str]) -> tuple[tuple[str, int, str], int, float]:
        regime, seed, setting = cell
        folder = run_folder(options.output_dir, regime, seed, setting)
        os.makedirs(folder, exist_ok=True)
        command = [sys.executable, os.path.abspath(__file__), "run", "--regime", regime, "--seed", str(seed)]
        command += ["--setting", setting, "--output_dir", options.output_dir]
        command += ["--cache_dir", options.cache_dir] if options.cache_dir else []
        start = time.time()
        with open(os.path.join(folder, "log.txt"), "w") as log:
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        return cell, code, time.time() - start

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=options.jobs) as pool:
        for (regime, seed, setting), code, seconds in pool.map(launch, [] if options.report_only else cells):
            status = "done" if code == 0 else f"FAILED (exit {code}, see its log.txt)"
            print(f"[regimes] {regime}, seed {seed}, {setting}: {status} in {seconds:.0f} s", flush=True)
    outcomes = {}
    for cell in cells:
        path = os.path.join(run_folder(options.output_dir, *cell), "results.json")
        if os.path.exists(path):
            with open(path) as handle:
                outcomes[cell] = json.load(handle)
    command = " ".join(["python benchmarks/world_ablations.py", *(a for a in sys.argv[1:] if a != "--report_only")])
    seconds = time.time() - start if not options.report_only else _seconds_taken(outcomes)
    text = regimes_report(outcomes, options, command, seconds, None if options.report_only else _machine())
    write_section(options.report, REGIMES_MARKERS, text)
    plot_regime_curves(outcomes, options, os.path.join(os.path.dirname(options.report), "world_regimes.png"))
    print(text)


def _machine() -> str:
    """Where the runs trained: the GPU (the trainer uses one when there is one) or the CPU, and torch's version."""
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    return f"{device}, torch {torch.__version__}"


def _seconds_taken(outcomes: dict) -> float:
    """The longest run's time, when the report is made from runs that ended earlier."""
    return max((result["runtime_seconds"] for result in outcomes.values()), default=0.0)


def regimes_report(
    outcomes: dict, options: argparse.Namespace, command: str, seconds: float, machine: str | None = None
) -> str:
    where = f" on {machine}" if machine else ""
    lines = [
        "## Regimes: from a vague, a mixed and a good captioner",
        "",
        f"Made by `{command}` ({len(outcomes)} runs in {seconds / 60:.0f} min{where}, {options.jobs} at a time; "
        "curves: [world_regimes.png](world_regimes.png)).",
        "Worlds `WorldConfig.from_seed(0, regime)`: the same images and retriever, human captions descriptive 20% "
        "(vague, the default world), 40% (mixed) or 70% (good). Each run is the main job with the setting's "
        "overrides and training seed `seed`; P@1 (%) with 100 candidates on the 1,000 test images of each split, "
        "beam-5 captions (greedy in brackets); colour: share of beam-5 captions naming a colour, after.",
        "",
    ]
    for name in options.settings:
        lines.append(f"- **{name}**: {SETTING_NOTES[name]}.")
    lines.append("")
    header = (
        "| regime | seed | setting | in-domain before | in-domain after | shifted before | shifted after | "
        "colour after (in / shifted) | kept step | in-batch accuracy (min after its peak, last) | alarms |"
    )
    lines += [header, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    worst = {}
    for regime in options.regimes:
        for setting in options.settings:
            for seed in options.seeds:
                result = outcomes.get((regime, seed, setting))
                if result is None:
                    lines.append(f"| {regime} | {seed} | {setting} | failed | | | | | | | |")
                    continue
                cells = []
                for split in ("in_domain", "shifted"):
                    beam, greedy = result[split]["p_at_1"], result[split]["greedy_p_at_1"]
                    cells += [
                        f"{beam['before']:.1f} ({greedy['before']:.1f})",
                        f"{beam['after']:.1f} ({greedy['after']:.1f})",
                    ]
                    change = beam["after"] - beam["before"]
                    worst[(setting, split)] = min(worst.get((setting, split), change), change)
                color = f"{100 * result['in_domain']['color_word_rate']['after']:.0f}% / "
                color += f"{100 * result['shifted']['color_word_rate']['after']:.0f}%"
                kept = result["selection"]["kept_step"] if result.get("selection") else "last"
                accuracy = [entry["retrieval/accuracy"] for entry in result["training_curves"]]
                peak = accuracy.index(max(accuracy)) if accuracy else 0
                curve = f"{min(accuracy[peak:]):.2f}, {accuracy[-1]:.2f}" if accuracy else "not logged"
                alarms = "; ".join(
                    f"step {alarm['step']}: {alarm['metric']} {alarm['value']:.2f} (level {alarm['level']:.2f})"
                    for alarm in result["collapse_alarms"]
                )
                lines.append(
                    f"| {regime} | {seed} | {setting} | {' | '.join(cells)} | {color} | {kept} | {curve} | "
                    f"{alarms or 'none'} |"
                )
    lines += ["", "Worst change of beam-5 P@1 (after - before) over regimes and seeds, in points:", ""]
    lines += ["| setting | in-domain | shifted |", "|---|---:|---:|"]
    for setting in options.settings:
        if (setting, "in_domain") in worst:
            lines.append(f"| {setting} | {worst[(setting, 'in_domain')]:+.1f} | {worst[(setting, 'shifted')]:+.1f} |")
    lines.append("")
    return "\n".join(lines)


def plot_regime_curves(outcomes: dict, options: argparse.Namespace, path: str) -> None:
    """In-batch retrieval accuracy over training, one panel per regime, one line per setting and seed."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(options.regimes), 3.6))
    axes = figure.subplots(1, len(options.regimes), squeeze=False)[0]
    for axis, regime in zip(axes, options.regimes):
        for index, setting in enumerate(options.settings):
            for seed in options.seeds:
                result = outcomes.get((regime, seed, setting))
                if result is None:
                    continue
                curve = result["training_curves"]
                axis.plot(
                    [entry["step"] for entry in curve],
                    [100 * entry["retrieval/accuracy"] for entry in curve],
                    color=f"C{index}",
                    linestyle="-" if seed == options.seeds[0] else "--",
                    label=f"{setting} (seed {seed})",
                )
        axis.set(title=f"{regime} start", xlabel="step", ylabel="in-batch retrieval accuracy (%)")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=6)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    argv = sys.argv[1:]
    if not argv or argv[0] not in ("tables", "regimes", "run", "-h", "--help"):
        argv = ["tables", *argv]  # the original command line, without a sub-command
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    tables = commands.add_parser("tables", help="The paper's Tables 8, 9 and 13 (the default).")
    regimes = commands.add_parser("regimes", help="The regime table: every regime, seed and setting.")
    one = commands.add_parser("run", help="One cell of the regime table (what `regimes` launches).")
    for command, output_dir in ((tables, "outputs/ablations"), (regimes, "outputs/regimes"), (one, "outputs/regimes")):
        command.add_argument("--output_dir", default=output_dir)
        command.add_argument(
            "--cache_dir", default=None, help="World cache (default: $DISCRITUNE_WORLD_CACHE or ~/.cache)."
        )
    for command in (tables, regimes):
        command.add_argument("--report", default="benchmarks/world_ablations.md")
    regimes.add_argument("--regimes", nargs="+", default=list(WORLD_REGIMES), choices=list(WORLD_REGIMES))
    regimes.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="Training seeds (the world's is 0).")
    regimes.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    regimes.add_argument("--jobs", type=int, default=1, help="Runs at a time, each in its own process.")
    regimes.add_argument(
        "--report_only", action="store_true", help="Write the report from the runs in --output_dir; run nothing."
    )
    one.add_argument("--regime", required=True, choices=list(WORLD_REGIMES))
    one.add_argument("--seed", type=int, required=True)
    one.add_argument("--setting", required=True, choices=list(SETTINGS))
    options = parser.parse_args(argv)
    {"tables": run_tables, "regimes": run_regimes, "run": run_one}[options.command](options)


if __name__ == "__main__":
    main()
