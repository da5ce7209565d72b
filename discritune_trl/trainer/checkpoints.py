"""Checkpoints a run can trust: which `checkpoint-N` folders are complete, and whether one fits the trainer.

`Trainer._save_checkpoint` writes a checkpoint's files in a fixed order and `trainer_state.json` last (the
running-mean baseline travels inside it, see `RunningMeanBaseline`). A folder whose `trainer_state.json` is
missing or unreadable was therefore cut off while saving (a kill, a full disk): `last_complete_checkpoint` skips it.
`validate_checkpoint` reads everything a resume will need *before* the trainer changes any state, so a refused
resume leaves the trainer as it was.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from typing import Any

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR


logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
# Written next to the checkpoint by discritune-trl before the baseline moved into trainer_state.json; still read.
LEGACY_BASELINE_STATE_NAME = "discritune_baseline.json"
WEIGHTS_NAMES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
_CHECKPOINT_PATTERN = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def checkpoint_problem(folder: str) -> str | None:
    """Why `folder` is not a complete checkpoint (files missing or unreadable), or `None` when it is."""
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    state_path = os.path.join(folder, TRAINER_STATE_NAME)
    if not os.path.isfile(state_path):
        return f"it has no {TRAINER_STATE_NAME} (the file Trainer writes last)"
    try:
        with open(state_path, encoding="utf-8") as handle:
            json.load(handle)
    except (OSError, ValueError) as error:
        return f"{state_path} is unreadable ({type(error).__name__}: {error})"
    entries = os.listdir(folder)
    # FSDP and DeepSpeed write the weights into sub-folders (pytorch_model_fsdp_0, global_step<N>).
    if not any(name in WEIGHTS_NAMES for name in entries) and not any(
        os.path.isdir(os.path.join(folder, name)) for name in entries
    ):
        return f"it holds no model weights (none of {', '.join(WEIGHTS_NAMES)})"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest complete `checkpoint-N` in `output_dir`, warning about every newer incomplete one it skips."""
    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(match.group(1)), name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_PATTERN.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        folder = os.path.join(output_dir, name)
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning(
            "Skipping the incomplete checkpoint %s: %s. It was most likely cut off while being saved; resuming "
            "from the newest complete checkpoint before it instead.",
            folder,
            problem,
        )
    return None


def read_baseline_state(folder: str, state_name: str) -> dict[str, float | int] | None:
    """The running-mean baseline state saved in checkpoint `folder`, or `None` when the checkpoint holds none.

    Read from `trainer_state.json` (`stateful_callbacks[state_name]`), or from the legacy `discritune_baseline.json`.

    Raises:
        ValueError: a state that is there but unreadable, naming the file and what is wrong.
    """
    state_path = os.path.join(folder, TRAINER_STATE_NAME)
    with open(state_path, encoding="utf-8") as handle:
        entry = (json.load(handle).get("stateful_callbacks") or {}).get(state_name)
    if entry is not None:
        attributes = entry.get("attributes") if isinstance(entry, dict) else None
        return _checked_baseline_state(attributes, f"{state_path} (stateful_callbacks[{state_name!r}])")
    legacy_path = os.path.join(folder, LEGACY_BASELINE_STATE_NAME)
    if not os.path.isfile(legacy_path):
        return None
    try:
        with open(legacy_path, encoding="utf-8") as handle:
            legacy = json.load(handle)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"The running-mean baseline file {legacy_path} is unreadable ({type(error).__name__}: {error}). Delete "
            "it and pass reset_baseline_on_resume=True to restart the baseline at 0, or resume from another "
            "checkpoint."
        ) from error
    return _checked_baseline_state(legacy, legacy_path)


def _checked_baseline_state(state: Any, where: str) -> dict[str, float | int]:
    mean = state.get("mean") if isinstance(state, dict) else None
    count = state.get("count") if isinstance(state, dict) else None
    valid = (
        isinstance(mean, (int, float))
        and not isinstance(mean, bool)
        and math.isfinite(mean)
        and isinstance(count, int)
        and not isinstance(count, bool)
        and count >= 0
    )
    if not valid:
        raise ValueError(
            f"The running-mean baseline state in {where} is unreadable: expected {{'mean': <finite number>, "
            f"'count': <int >= 0>}}, found {state!r}. Pass reset_baseline_on_resume=True to restart the baseline "
            "at 0, or resume from another checkpoint."
        )
    return {"mean": float(mean), "count": int(count)}


def check_architecture(folder: str, model) -> None:
    """Refuse a checkpoint written by another architecture than `model`'s, before any weight is loaded.

    Compares `config.json`'s `model_type` with the model's, then, for a `model.safetensors` checkpoint, the names and
    shapes of the saved tensors with the model's (weights tied to a saved one may be absent, as `save_pretrained`
    leaves them out).

    Raises:
        ValueError: naming both architectures, or the tensors that differ.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    config_path = os.path.join(folder, "config.json")
    if model_type is not None and os.path.isfile(config_path):
        try:
            with open(config_path, encoding="utf-8") as handle:
                saved = json.load(handle)
        except (OSError, ValueError) as error:
            raise ValueError(f"{config_path} is unreadable ({type(error).__name__}: {error}).") from error
        saved_type = saved.get("model_type")
        if saved_type != model_type:
            saved_name = ", ".join(saved.get("architectures") or []) or "unknown class"
            raise ValueError(
                f"{folder} holds a {saved_type!r} model ({saved_name}), but this trainer trains a {model_type!r} model "
                f"({type(model).__name__}): resume with the architecture the checkpoint was trained with, or start "
                "a new run (a checkpoint's weights only fit its own architecture)."
            )
    weights_path = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(weights_path):
        return
    from safetensors import safe_open

    with safe_open(weights_path, framework="pt") as handle:
        saved_shapes = {key: list(handle.get_slice(key).get_shape()) for key in handle.keys()}
    expected = model.state_dict()
    # Tensors sharing storage (tied weights) are saved once: a group is present when any of its names is.
    groups: dict[int, list[str]] = {}
    for key, tensor in expected.items():
        groups.setdefault(tensor.data_ptr() if tensor.numel() else id(tensor), []).append(key)
    missing = [keys[0] for keys in groups.values() if not any(key in saved_shapes for key in keys)]
    unexpected = [key for key in saved_shapes if key not in expected]
    mismatched = [
        f"{key} {shape} (model: {list(expected[key].shape)})"
        for key, shape in saved_shapes.items()
        if key in expected and shape != list(expected[key].shape)
    ]
    if missing or unexpected or mismatched:
        details = "; ".join(
            f"{label}: {_shortlist(keys)}"
            for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shape", mismatched))
            if keys
        )
        raise ValueError(
            f"{weights_path} does not fit {type(model).__name__} ({details}). The checkpoint was written for another "
            "configuration of the model: resume with the configuration it was trained with."
        )


def _shortlist(keys: list[str], limit: int = 4) -> str:
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")
