"""Load any discritune-trl policy from a saved folder or Hub id by its config's `model_type`, adapters included."""

from __future__ import annotations

import json

from transformers.utils import cached_file

from .policy import CaptioningPolicy


ADAPTER_CONFIG_NAME = "adapter_config.json"


def load_policy(path: str, **kwargs) -> CaptioningPolicy:
    """Load a policy saved with `save_pretrained` (or by `DiscriTuneTrainer.save_model`), picking the class from
    `config.json`'s `model_type`.

    A folder that holds LoRA adapters (`adapter_config.json`, as saved after training with `peft_config`) is loaded
    onto its base policy, read from the adapter config's `base_model_name_or_path`, and returned as a
    `peft.PeftModel`.

    Args:
        path: a local folder, or a Hub id (when connected or in the Hugging Face cache).
        kwargs: passed on to the policy's `from_pretrained`.
    """
    config_file = cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
    if config_file is None:
        return _load_adapters(path, **kwargs)
    with open(config_file) as handle:
        model_type = json.load(handle).get("model_type")
    policy_class = _policy_class(model_type)
    if policy_class is None:
        raise ValueError(f"No discritune_trl policy has model_type={model_type!r} ({path}); load it with its class.")
    return policy_class.from_pretrained(path, **kwargs)


def _policy_class(model_type: str | None) -> type | None:
    import discritune_trl

    for name in discritune_trl.__all__:
        candidate = getattr(discritune_trl, name)
        config_class = getattr(candidate, "config_class", None)
        if isinstance(candidate, type) and issubclass(candidate, CaptioningPolicy) and config_class is not None:
            if config_class.model_type == model_type:
                return candidate
    return None


def _load_adapters(path: str, **kwargs):
    adapter_file = cached_file(path, ADAPTER_CONFIG_NAME, _raise_exceptions_for_missing_entries=False)
    if adapter_file is None:
        raise ValueError(
            f"{path} holds neither config.json nor {ADAPTER_CONFIG_NAME}: pass a folder written by save_pretrained "
            "or DiscriTuneTrainer.save_model (or a Hub id, when connected)."
        )
    with open(adapter_file) as handle:
        base = json.load(handle).get("base_model_name_or_path")
    if not base:
        raise ValueError(
            f"{path} holds LoRA adapters saved without their base policy's path: load the base policy yourself, then "
            f"peft.PeftModel.from_pretrained(base_policy, {path!r})."
        )
    from peft import PeftModel

    return PeftModel.from_pretrained(load_policy(base, **kwargs), path)
