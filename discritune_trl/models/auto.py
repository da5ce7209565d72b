"""Load any discritune-trl policy from a saved folder or Hub id by its config's `model_type`, adapters included.

`POLICY_MAPPING` (`model_type` -> policy class) is the one registry of policy classes: `load_policy` reads it, and
`register_policy` adds a user's class to it. `register_policy` also registers the class with transformers' `AutoConfig`
and `AutoModel`, so that after `import discritune_trl` `AutoModel.from_pretrained(saved_folder)` loads a saved policy
as its own class, unless the `model_type` is one of transformers' own (`BlipPolicy` keeps BLIP's `"blip"`: its folders
load with transformers' BLIP classes, and `AutoModel` keeps meaning what transformers means by it).
"""

from __future__ import annotations

import json
import os

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor, PreTrainedConfig
from transformers import pipelines as transformers_pipelines
from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
from transformers.pipelines import PIPELINE_REGISTRY, ImageTextToTextPipeline
from transformers.utils import cached_file

from .blip import BlipPolicy, BlipPolicyConfig
from .clipcap import ClipCapConfig, ClipCapPolicy, ClipCapProcessor
from .hf_captioner import HFCaptionerConfig, HFCaptionerPolicy
from .policy import CaptioningPolicy
from .vlm import VLMPolicy, VLMPolicyConfig


# `config.json`'s `model_type` -> the policy class that loads it.
POLICY_MAPPING: dict[str, type[CaptioningPolicy]] = {}


def register_policy(
    config_class: type[PreTrainedConfig], policy_class: type[CaptioningPolicy], exist_ok: bool = False
) -> None:
    """Make `load_policy` (and the model card's usage snippet) load `policy_class` for folders whose `config.json`
    has `model_type == config_class.model_type`, and so do transformers' `AutoConfig` / `AutoModel` (unless the
    `model_type` is one of transformers' own models, whose Auto classes stay as transformers defines them).

    Args:
        config_class: the policy's config class; its `model_type` must be set and unique.
        policy_class: a `CaptioningPolicy` whose `config_class` is `config_class`.
        exist_ok: replace a class already registered for this `model_type` instead of raising.

    Raises:
        TypeError: if `policy_class` is not a `CaptioningPolicy`, or its `config_class` is another class.
        ValueError: if `config_class` has no `model_type`, or another class is registered for it (and not
            `exist_ok`).
    """
    if not (isinstance(policy_class, type) and issubclass(policy_class, CaptioningPolicy)):
        raise TypeError(f"policy_class={policy_class!r} is not a CaptioningPolicy subclass.")
    if getattr(policy_class, "config_class", None) is not config_class:
        raise TypeError(
            f"{policy_class.__name__}.config_class is {getattr(policy_class, 'config_class', None)!r}, not "
            f"{config_class.__name__}: set `config_class = {config_class.__name__}` on the policy class."
        )
    model_type = getattr(config_class, "model_type", "")
    if not model_type:
        raise ValueError(
            f"{config_class.__name__} has no model_type; give it a unique one (model_type = 'my_policy')."
        )
    registered = POLICY_MAPPING.get(model_type)
    if registered is not None and registered is not policy_class and not exist_ok:
        raise ValueError(
            f"model_type={model_type!r} is already registered to {registered.__name__}; give "
            f"{config_class.__name__} its own model_type, or pass exist_ok=True to replace it."
        )
    POLICY_MAPPING[model_type] = policy_class
    if model_type not in CONFIG_MAPPING_NAMES:  # not one of transformers' own model types (BLIP's "blip")
        AutoConfig.register(model_type, config_class, exist_ok=True)
        AutoModel.register(config_class, policy_class, exist_ok=True)


for _config_class, _policy_class in (
    (ClipCapConfig, ClipCapPolicy),
    (BlipPolicyConfig, BlipPolicy),
    (HFCaptionerConfig, HFCaptionerPolicy),
    (VLMPolicyConfig, VLMPolicy),
):
    register_policy(_config_class, _policy_class)


def _register_clipcap_pipeline() -> None:
    """Let transformers' `image-text-to-text` pipeline (where `pipeline("image-to-text")` leads) load and run a saved
    ClipCap: the model through `AutoModelForImageTextToText`, `ClipCapProcessor` through `AutoProcessor`.

    The pipeline checks the model's class name against `MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES` (and logs an
    error for any other), so the name is added there too; transformers' own lookups skip model types it does not
    know. Where transformers has no `image-to-text` task at all (before 5.2x redirected it to
    `image-text-to-text`), the task is registered as that redirect, so the same call works on every supported version.
    """
    AutoModelForImageTextToText.register(ClipCapConfig, ClipCapPolicy, exist_ok=True)
    AutoProcessor.register(ClipCapConfig, ClipCapProcessor, exist_ok=True)
    MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES.setdefault(ClipCapConfig.model_type, ClipCapPolicy.__name__)
    if "image-to-text" not in PIPELINE_REGISTRY.get_supported_tasks() and not hasattr(
        transformers_pipelines, "_resolve_deprecated_task"
    ):
        PIPELINE_REGISTRY.register_pipeline(
            "image-to-text",
            pipeline_class=ImageTextToTextPipeline,
            pt_model=AutoModelForImageTextToText,
            type="multimodal",
        )


_register_clipcap_pipeline()


ADAPTER_CONFIG_NAME = "adapter_config.json"


def load_policy(path: str, **kwargs) -> CaptioningPolicy:
    """Load a policy saved with `save_pretrained` (or by `DiscriTuneTrainer.save_model`), picking the class from
    `config.json`'s `model_type`.

    A folder that holds LoRA adapters (`adapter_config.json`, as saved after training with `peft_config`) is loaded
    onto its base policy, read from the adapter config's `base_model_name_or_path`, and returned as a
    `peft.PeftModel`. The class is looked up in `POLICY_MAPPING` (see `register_policy`).

    Args:
        path: a local folder, or a Hub id (when connected or in the Hugging Face cache).
        kwargs: passed on to the policy's `from_pretrained`.
    """
    config_file = _find_config(os.fspath(path))
    if config_file is None:
        return _load_adapters(path, **kwargs)
    try:
        with open(config_file) as handle:
            model_type = json.load(handle).get("model_type")
    except (ValueError, AttributeError) as error:  # not JSON, or JSON that is not an object
        raise ValueError(
            f"{config_file} is not a valid config.json ({type(error).__name__}: {error}): write the folder again with "
            "save_pretrained."
        ) from error
    policy_class = POLICY_MAPPING.get(model_type)
    if policy_class is None:
        raise ValueError(
            f"No policy class is registered for model_type={model_type!r} ({path}); registered: "
            f"{sorted(POLICY_MAPPING)}. Register yours first with "
            "discritune_trl.models.register_policy(YourConfig, YourPolicy), or load it with YourPolicy.from_pretrained."
        )
    return policy_class.from_pretrained(path, **kwargs)


def _find_config(path: str) -> str | None:
    """`path`'s config.json (a local folder, or a Hub id read through the cache), `None` when it has none; a path that
    is neither a folder nor a possible Hub id is a `FileNotFoundError` naming it."""
    if os.path.isfile(path):
        raise ValueError(
            f"load_policy({path!r}): that is a file; pass the folder written by save_pretrained (an original ClipCap "
            ".pt checkpoint loads with ClipCapPolicy.from_original_checkpoint)."
        )
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or "\\" in path
    if not os.path.isdir(path) and looks_local:
        raise FileNotFoundError(
            f"load_policy({path!r}): no such folder. Pass a folder written by save_pretrained or "
            "DiscriTuneTrainer.save_model, or a Hub id (when connected)."
        )
    try:
        return cached_file(path, "config.json", _raise_exceptions_for_missing_entries=False)
    except (OSError, ValueError) as error:
        raise OSError(
            f"load_policy({path!r}): not a local folder, and not readable as a Hub id ({error}). Pass a folder "
            "written by save_pretrained, or a Hub id when connected (or already in the Hugging Face cache)."
        ) from error


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
