"""Captioning policies: the `CaptioningPolicy` interface, ClipCap, BLIP, any transformers image-to-text model, and
prompted vision-language models.

A captioner author needs `CaptioningPolicy`, `CaptionOutput`, the decoding helpers (`full_stop_token_ids`,
`truncate_at_stop`, `captions_from_generated`: any `decode` function or word list, no tokenizer needed) and
`register_policy`, which lets `load_policy` find the class by its `model_type` (see `docs/custom_captioner.md`).
"""

from .auto import POLICY_MAPPING, load_policy, register_policy
from .blip import BlipPolicy, BlipPolicyConfig
from .clipcap import ClipCapConfig, ClipCapPolicy, ClipCapProcessor
from .hf_captioner import CaptionerFamily, HFCaptionerConfig, HFCaptionerPolicy
from .policy import (
    CaptioningPolicy,
    CaptionOutput,
    captions_from_generated,
    check_generation_arguments,
    full_stop_token_ids,
    gather_token_log_probs,
    reduce_token_log_probs,
    register_fsdp_forward_methods,
    token_entropies,
    truncate_at_stop,
)
from .vlm import VLMPolicy, VLMPolicyConfig, vlm_lora_config


__all__ = [
    "POLICY_MAPPING",
    "BlipPolicy",
    "BlipPolicyConfig",
    "CaptionOutput",
    "CaptionerFamily",
    "CaptioningPolicy",
    "ClipCapConfig",
    "ClipCapPolicy",
    "ClipCapProcessor",
    "HFCaptionerConfig",
    "HFCaptionerPolicy",
    "VLMPolicy",
    "VLMPolicyConfig",
    "captions_from_generated",
    "check_generation_arguments",
    "full_stop_token_ids",
    "gather_token_log_probs",
    "load_policy",
    "reduce_token_log_probs",
    "register_fsdp_forward_methods",
    "register_policy",
    "token_entropies",
    "truncate_at_stop",
    "vlm_lora_config",
]
