"""DiscriTune settings measured on the default world (see `docs/world.md` for the figures).

Only the fields that differ from `DiscriTuneConfig`'s paper defaults are listed: the paper's learning rate
(1e-7) is tuned for GPT-2 small on COCO and barely moves the world's small GPT-2 in 400 steps.
"""

from __future__ import annotations

from typing import Any


#: `DiscriTuneConfig` fields for the world. With them, the default world (seed 0) went from P@1 6.8% to 88.6%
#: in-domain and from 4.9% to 57.1% on the shifted domain (beam 5, 100 candidates) in 400 steps. At
#: `learning_rate=1e-4` the same run peaked near step 150 and collapsed into one-word captions by step 340.
DISCRITUNE_WORLD_SETTINGS: dict[str, Any] = {
    "learning_rate": 2e-5,
    "max_steps": 400,
    "per_device_train_batch_size": 100,
    "logging_steps": 20,
}


def world_settings() -> dict[str, Any]:
    """A copy of :data:`DISCRITUNE_WORLD_SETTINGS`, safe to modify."""
    return dict(DISCRITUNE_WORLD_SETTINGS)
