"""ClipCap (Mokady et al., 2021) as a DiscriTune policy."""

from .configuration_clipcap import ClipCapConfig
from .modeling_clipcap import ClipCapPolicy


__all__ = ["ClipCapConfig", "ClipCapPolicy"]
