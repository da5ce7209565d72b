"""Captioning policies: the `CaptioningPolicy` interface, ClipCap, BLIP, and any transformers image-to-text model."""

from .blip import BlipPolicy, BlipPolicyConfig
from .clipcap import ClipCapConfig, ClipCapPolicy
from .hf_captioner import CaptionerFamily, HFCaptionerConfig, HFCaptionerPolicy
from .policy import CaptioningPolicy, CaptionOutput


__all__ = [
    "BlipPolicy",
    "BlipPolicyConfig",
    "CaptionOutput",
    "CaptionerFamily",
    "CaptioningPolicy",
    "ClipCapConfig",
    "ClipCapPolicy",
    "HFCaptionerConfig",
    "HFCaptionerPolicy",
]
