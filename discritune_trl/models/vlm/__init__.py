"""Prompted vision-language models (`AutoModelForImageTextToText`: SmolVLM / Idefics3, Qwen2-VL, LLaVA...) as
DiscriTune policies."""

from .configuration_vlm_policy import DEFAULT_VLM_PROMPT, VLMPolicyConfig
from .modeling_vlm_policy import LANGUAGE_MODEL_LORA_TARGETS, VLMPolicy, vlm_lora_config


__all__ = ["DEFAULT_VLM_PROMPT", "LANGUAGE_MODEL_LORA_TARGETS", "VLMPolicy", "VLMPolicyConfig", "vlm_lora_config"]
