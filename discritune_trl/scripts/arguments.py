"""What the scripts share: the retriever flags, LoRA from TRL's `ModelConfig`, and refusing flags that do not apply."""

from __future__ import annotations

import importlib
import json
import warnings
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from peft import LoraConfig
from trl import ModelConfig, get_peft_config

from ..models.clipcap import ClipCapPolicy
from ..models.policy import CaptioningPolicy
from ..retrievers import OpenCLIPRetriever, TransformersCLIPRetriever
from ..retrievers.base import Retriever


@dataclass
class RetrieverArguments:
    """The frozen retriever that judges the captions: an open_clip model by name and pretrained tag (the paper's
    CLIP ViT-B/32), a local open_clip checkpoint (with `retriever_model_cfg` for a custom architecture), or a
    transformers CLIPModel/SiglipModel/Siglip2Model."""

    retriever_model_name: str = field(default="ViT-B-32", metadata={"help": "open_clip retriever architecture."})
    retriever_pretrained: str | None = field(default="openai", metadata={"help": "Its open_clip pretrained tag."})
    retriever_checkpoint: str | None = field(default=None, metadata={"help": "Or a local open_clip checkpoint."})
    retriever_model_cfg: str | None = field(
        default=None, metadata={"help": "JSON file with an open_clip architecture config, for custom retrievers."}
    )
    retriever_transformers_model: str | None = field(
        default=None,
        metadata={"help": "Use a transformers CLIPModel/SiglipModel/Siglip2Model (folder or Hub id) instead."},
    )
    retriever_class: str | None = field(
        default=None,
        metadata={
            "help": "Or any Retriever class by dotted path (e.g. mypackage.MyRetriever), with retriever_kwargs."
        },
    )
    retriever_kwargs: str = field(default="{}", metadata={"help": "JSON keyword arguments for retriever_class."})


def resolve_class(dotted: str) -> type:
    """`"package.module.Name"` -> the object `Name` of that module."""
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def build_retriever(args: RetrieverArguments) -> Retriever:
    """The retriever the flags name."""
    if args.retriever_class:
        return resolve_class(args.retriever_class)(**json.loads(args.retriever_kwargs))
    if args.retriever_transformers_model:
        return TransformersCLIPRetriever.from_pretrained(args.retriever_transformers_model)
    model_cfg = None
    if args.retriever_model_cfg:
        with open(args.retriever_model_cfg) as handle:
            model_cfg = json.load(handle)
    local = args.retriever_checkpoint or model_cfg
    return OpenCLIPRetriever(
        None if model_cfg else args.retriever_model_name,
        pretrained=None if local else args.retriever_pretrained,
        model_cfg=model_cfg,
        checkpoint_path=args.retriever_checkpoint,
    )


# `ModelConfig` fields a captioner policy cannot take (quantisation, dtype, revision, the causal-LM PEFT wrapper):
# refused when set, never dropped.
UNSUPPORTED_MODEL_CONFIG = (
    "model_revision", "dtype", "attn_implementation", "lora_task_type", "load_in_8bit", "load_in_4bit",
    "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage",
)  # fmt: skip


def refuse_given(args: Any, names: tuple[str, ...] | list[str], reason: str) -> None:
    """Raise naming the first field of the dataclass `args` in `names` whose value is not its default."""
    for item in fields(args):
        if item.name not in names:
            continue
        value = getattr(args, item.name)
        default = item.default_factory() if item.default is MISSING else item.default
        if value != default:
            raise ValueError(f"--{item.name}={value!r} {reason}")


CAPTION_LENGTH_HELP = "Longest caption, in tokens (TRL's name, as in `train`; `--max_new_tokens` is deprecated)."


def map_deprecated_max_new_tokens(args: Any, default: int = 40) -> None:
    """`--max_new_tokens` (the old name of `caption` and `evaluate`) onto `max_completion_length`, the name `train`
    and `DiscriTuneConfig` use, with a FutureWarning; both given with different values is an error naming both."""
    if args.max_new_tokens is None:
        return
    warnings.warn(
        f"--max_new_tokens={args.max_new_tokens} is deprecated and will be removed in a later 0.x release; use "
        f"--max_completion_length={args.max_new_tokens} (TRL's name, as in `discritune-trl train`).",
        FutureWarning,
        stacklevel=3,
    )
    if args.max_completion_length not in (default, args.max_new_tokens):
        raise ValueError(
            f"--max_new_tokens={args.max_new_tokens} (deprecated) and --max_completion_length="
            f"{args.max_completion_length} disagree; give only --max_completion_length."
        )
    args.max_completion_length, args.max_new_tokens = args.max_new_tokens, None


def lora_config(model_args: ModelConfig, policy_class: type[CaptioningPolicy]) -> LoraConfig | None:
    """TRL's `get_peft_config(model_args)` for a captioner policy: `--lora_target_modules` defaults to the policy's
    `lora_target_modules` (ClipCap: GPT-2's attention, `c_attn`), and the adapters wrap the policy itself (no
    causal-LM task wrapper). `None` without `--use_peft`."""
    refuse_given(model_args, UNSUPPORTED_MODEL_CONFIG, "is not supported by the captioner policies; drop it.")
    config = get_peft_config(model_args)
    if config is None:
        return None
    config.task_type = None
    if config.target_modules is None:
        config.target_modules = getattr(policy_class, "lora_target_modules", None)
        if config.target_modules is None:
            raise ValueError(
                f"{policy_class.__name__} names no default LoRA target modules: pass --lora_target_modules."
            )
    config.fan_in_fan_out = issubclass(policy_class, ClipCapPolicy)  # GPT-2's Conv1D layers store W transposed
    return config
