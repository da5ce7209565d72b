"""Evaluation: retrieval P@1 / recall@k, captioning metrics, hard-distractor sets, human study, caption language.

Heavy optional dependencies (pycocoevalcap, spaCy, a browser) are imported only inside the functions that
need them, so importing this package stays light.
"""

from .captioning import CAPTION_METRICS, caption_metrics, ptb_tokenize, simple_tokenize, spice_missing_reason
from .retrieval import encode_captions, encode_gallery, precision_at_1, recall_at_k, retrieval_metrics


__all__ = [
    "CAPTION_METRICS",
    "caption_metrics",
    "ptb_tokenize",
    "simple_tokenize",
    "spice_missing_reason",
    "encode_captions",
    "encode_gallery",
    "precision_at_1",
    "recall_at_k",
    "retrieval_metrics",
]
