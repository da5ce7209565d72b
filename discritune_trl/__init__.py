"""discritune-trl: discriminative fine-tuning of image captioners (DiscriTune) for the Hugging Face ecosystem."""

__version__ = "0.1.0.dev0"

from .evaluation import (
    build_hard_distractor_sets,
    caption_metrics,
    evaluate_captions,
    precision_at_1,
    recall_at_k,
    retrieval_metrics,
)
from .models import (
    BlipPolicy,
    BlipPolicyConfig,
    CaptioningPolicy,
    CaptionOutput,
    ClipCapConfig,
    ClipCapPolicy,
    ClipCapProcessor,
    HFCaptionerConfig,
    HFCaptionerPolicy,
    VLMPolicy,
    VLMPolicyConfig,
)
from .retrievers import OpenCLIPRetriever, Retriever, TransformersCLIPRetriever
from .rewards import DiscriminativeRewardModel, RewardOutput, build_reward_model
from .trainer import DiscriTuneConfig, DiscriTuneTrainer, cache_frozen_embeddings


__all__ = [
    "BlipPolicy",
    "BlipPolicyConfig",
    "CaptionOutput",
    "CaptioningPolicy",
    "ClipCapConfig",
    "ClipCapPolicy",
    "ClipCapProcessor",
    "DiscriTuneConfig",
    "DiscriTuneTrainer",
    "DiscriminativeRewardModel",
    "HFCaptionerConfig",
    "HFCaptionerPolicy",
    "OpenCLIPRetriever",
    "Retriever",
    "RewardOutput",
    "TransformersCLIPRetriever",
    "VLMPolicy",
    "VLMPolicyConfig",
    "__version__",
    "build_hard_distractor_sets",
    "build_reward_model",
    "cache_frozen_embeddings",
    "caption_metrics",
    "evaluate_captions",
    "precision_at_1",
    "recall_at_k",
    "retrieval_metrics",
]
