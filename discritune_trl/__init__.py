"""discritune-trl: discriminative fine-tuning of image captioners (DiscriTune) for the Hugging Face ecosystem."""

__version__ = "0.1.0.dev0"

from .models.blip import BlipPolicy, BlipPolicyConfig
from .models.hf_captioner import HFCaptionerConfig, HFCaptionerPolicy
from .models.policy import CaptioningPolicy, CaptionOutput
from .retrievers.base import Retriever


__all__ = [
    "BlipPolicy",
    "BlipPolicyConfig",
    "CaptionOutput",
    "CaptioningPolicy",
    "HFCaptionerConfig",
    "HFCaptionerPolicy",
    "Retriever",
    "__version__",
]
