"""Load any discritune-trl policy from a saved folder by its config's `model_type`."""

from __future__ import annotations

import json
import os

from .policy import CaptioningPolicy


def load_policy(path: str, **kwargs) -> CaptioningPolicy:
    """Load a policy saved with `save_pretrained`, picking the class from `config.json`'s `model_type`.

    Args:
        path: the folder (or a Hub id when connected) holding `config.json` and the weights.
        kwargs: passed on to `from_pretrained`.
    """
    import discritune_trl

    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ValueError(f"{path} has no config.json to pick a policy class from; load it with its class instead.")
    with open(config_path) as handle:
        model_type = json.load(handle).get("model_type")
    for name in discritune_trl.__all__:
        candidate = getattr(discritune_trl, name)
        config_class = getattr(candidate, "config_class", None)
        if isinstance(candidate, type) and issubclass(candidate, CaptioningPolicy) and config_class is not None:
            if config_class.model_type == model_type:
                return candidate.from_pretrained(path, **kwargs)
    raise ValueError(f"No discritune_trl policy has model_type={model_type!r} ({path}); load it with its class.")
