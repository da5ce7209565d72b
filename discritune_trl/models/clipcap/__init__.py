"""ClipCap (Mokady et al., 2021) as a DiscriTune policy."""

from .configuration_clipcap import ClipCapConfig
from .convert_original import load_original_clipcap_checkpoint  # also wires ClipCapPolicy.from_original_checkpoint
from .modeling_clipcap import ClipCapPolicy
from .processing_clipcap import ClipCapImageProcessor, ClipCapProcessor


__all__ = [
    "ClipCapConfig",
    "ClipCapImageProcessor",
    "ClipCapPolicy",
    "ClipCapProcessor",
    "load_original_clipcap_checkpoint",
]
