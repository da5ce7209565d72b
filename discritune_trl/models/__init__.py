"""Captioning policies: the `CaptioningPolicy` interface and the built-in captioners."""

from .clipcap import ClipCapConfig, ClipCapPolicy
from .policy import CaptioningPolicy, CaptionOutput


__all__ = ["CaptionOutput", "CaptioningPolicy", "ClipCapConfig", "ClipCapPolicy"]
