"""Any `transformers` image-to-text captioner as a DiscriTune policy (and the code `BlipPolicy` shares)."""

from .configuration_hf_captioner import HFCaptionerConfig
from .families import CAPTIONER_FAMILIES, CaptionerFamily, find_family
from .modeling_hf_captioner import HFCaptionerPolicy
from .policy_mixin import HFCaptionerMixin


__all__ = [
    "CAPTIONER_FAMILIES",
    "CaptionerFamily",
    "HFCaptionerConfig",
    "HFCaptionerMixin",
    "HFCaptionerPolicy",
    "find_family",
]
