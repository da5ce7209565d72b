"""BLIP as a DiscriTune policy."""

from .configuration_blip_policy import DEFAULT_BLIP_PROMPT, BlipPolicyConfig
from .modeling_blip_policy import BlipPolicy


__all__ = ["DEFAULT_BLIP_PROMPT", "BlipPolicy", "BlipPolicyConfig"]
