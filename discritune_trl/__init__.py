"""discritune-trl: discriminative fine-tuning of image captioners (DiscriTune) for the Hugging Face ecosystem."""

__version__ = "0.1.0.dev0"

from .models.clipcap import ClipCapConfig, ClipCapPolicy
from .models.policy import CaptioningPolicy, CaptionOutput
from .retrievers import OpenCLIPRetriever, Retriever, TransformersCLIPRetriever
from .rewards import DiscriminativeRewardModel, RewardOutput
from .trainer import DiscriTuneConfig, DiscriTuneTrainer


__all__ = [
    "CaptionOutput",
    "ClipCapConfig",
    "ClipCapPolicy",
    "CaptioningPolicy",
    "DiscriTuneConfig",
    "DiscriTuneTrainer",
    "DiscriminativeRewardModel",
    "OpenCLIPRetriever",
    "Retriever",
    "RewardOutput",
    "TransformersCLIPRetriever",
    "__version__",
]
