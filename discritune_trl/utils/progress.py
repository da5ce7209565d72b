"""Progress bars: `disable_tqdm` (the `TrainingArguments` field, and a parameter of every helper that draws a bar)
switches off each bar the library draws, including those `datasets` draws on its behalf."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import datasets


@contextlib.contextmanager
def datasets_progress_bars(enabled: bool) -> Iterator[None]:
    """`datasets`' own progress bars (map, `save_to_disk`, ... and the embedding-cache pass, which follows them) off
    inside the block when not `enabled`; the global setting is restored on exit. With `enabled`, nothing changes (bars
    a user switched off with `datasets.disable_progress_bars()` stay off)."""
    switch_off = not enabled and datasets.is_progress_bar_enabled()
    if switch_off:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if switch_off:
            datasets.enable_progress_bars()
