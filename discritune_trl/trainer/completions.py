"""Completion logging in the manner of TRL's `log_completions`: each logged caption with its image's dataset index,
reward and advantage, printed as a table, written to one JSONL file per run and sent as a table to wandb / trackio.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


COMPLETIONS_DIR = "completions"
COLUMNS = ("step", "image_index", "caption", "reward", "advantage")


def new_run_id() -> str:
    """A run id for file names: UTC start time and process id (`20261127-161900-4242`), unique per run."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


def completions_path(output_dir: str, run_id: str) -> str:
    """`<output_dir>/completions/<run_id>.jsonl`: one file per run, never appended across runs."""
    return os.path.join(output_dir, COMPLETIONS_DIR, f"{run_id}.jsonl")


def format_completions_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of `rows` (dicts with the keys of `COLUMNS`), for consoles without `rich`."""
    header = ("image", "reward", "advantage", "caption")
    cells = [(str(r["image_index"]), f"{r['reward']:.3f}", f"{r['advantage']:+.3f}", r["caption"]) for r in rows]
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(3)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header[:3], widths)) + "  " + header[3]]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row[:3], widths)) + "  " + row[3] for row in cells]
    return "\n".join(lines)


def print_completions(rows: list[dict[str, Any]], step: int) -> None:
    """Print the table to stdout (visible whatever the log level): with `rich` when it is installed, as TRL does,
    else as plain text."""
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        print(f"Completions at step {step}:\n{format_completions_table(rows)}", file=sys.stdout, flush=True)
        return
    table = Table(title=f"Completions at step {step}", show_lines=False)
    for name, justify in (("Image", "right"), ("Caption", "left"), ("Reward", "right"), ("Advantage", "right")):
        table.add_column(name, justify=justify)
    for row in rows:
        table.add_row(str(row["image_index"]), row["caption"], f"{row['reward']:.3f}", f"{row['advantage']:+.3f}")
    Console().print(table)


def write_completions(rows: list[dict[str, Any]], path: str) -> None:
    """Append this logging step's rows to the run's JSONL file."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def report_completions(rows: list[dict[str, Any]], report_to: list[str]) -> list[str]:
    """Send the rows as a table named `completions` to wandb and trackio when they are in `report_to` and have a
    run open (the Trainer's callbacks open it at the start of training). Returns the trackers written to."""
    data = [[row[column] for column in COLUMNS] for row in rows]
    sent = []
    if "wandb" in report_to:
        try:
            import wandb
        except ImportError:
            wandb = None
        if wandb is not None and getattr(wandb, "run", None) is not None:
            wandb.log({"completions": wandb.Table(columns=list(COLUMNS), data=data)})
            sent.append("wandb")
    if "trackio" in report_to:
        try:
            import trackio
        except ImportError:
            trackio = None
        if trackio is not None:
            import pandas as pd

            trackio.log({"completions": trackio.Table(dataframe=pd.DataFrame(data, columns=list(COLUMNS)))})
            sent.append("trackio")
    return sent
