"""ClipCap (Mokady et al., 2021) as a DiscriTune policy."""

from .configuration_clipcap import ClipCapConfig
from .convert_original import load_original_clipcap_checkpoint  # also wires ClipCapPolicy.from_original_checkpoint
from .modeling_clipcap import ClipCapPolicy


__all__ = ["ClipCapConfig", "ClipCapPolicy", "load_original_clipcap_checkpoint"]
