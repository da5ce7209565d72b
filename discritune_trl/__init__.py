"""discritune-trl: discriminative fine-tuning of image captioners (DiscriTune) for the Hugging Face ecosystem."""

__version__ = "0.1.0.dev0"

from .models.clipcap import ClipCapConfig, ClipCapPolicy
from .models.policy import CaptioningPolicy, CaptionOutput
from .retrievers.base import Retriever


__all__ = [
    "CaptionOutput",
    "ClipCapConfig",
    "ClipCapPolicy",
    "CaptioningPolicy",
    "Retriever",
    "__version__",
]
