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
from .models.policy import CaptioningPolicy, CaptionOutput
from .retrievers.base import Retriever


__all__ = [
    "CaptionOutput",
    "CaptioningPolicy",
    "Retriever",
    "__version__",
    "build_hard_distractor_sets",
    "caption_metrics",
    "evaluate_captions",
    "precision_at_1",
    "recall_at_k",
    "retrieval_metrics",
]
