"""Captioning policies: the interface, BLIP, and any transformers image-to-text captioner."""

from .blip import BlipPolicy, BlipPolicyConfig
from .hf_captioner import CaptionerFamily, HFCaptionerConfig, HFCaptionerPolicy
from .policy import CaptioningPolicy, CaptionOutput


__all__ = [
    "BlipPolicy",
    "BlipPolicyConfig",
    "CaptionOutput",
    "CaptionerFamily",
    "CaptioningPolicy",
    "HFCaptionerConfig",
    "HFCaptionerPolicy",
]
