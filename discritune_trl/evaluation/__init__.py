"""Evaluation: retrieval P@1 / recall@k, captioning metrics, hard-distractor sets, human study, caption language.

Heavy optional dependencies (pycocoevalcap, spaCy, a browser) are imported only inside the functions that
need them, so importing this package stays light.
"""

from .captioning import CAPTION_METRICS, caption_metrics, ptb_tokenize, simple_tokenize, spice_missing_reason
from .distractors import build_hard_distractor_sets, candidate_set_accuracy, hard_distractor_accuracy
from .human_study import HumanStudy, build_control_sets, export_human_study, score_human_study
from .language import count_lemmas, lmi_markdown_table, local_mutual_information, top_lemmas_by_lmi
from .metrics import EVALUATE_MODULES, evaluate_module_path
from .report import (
    METRIC_HEADERS,
    PAPER_CAPTION_COLUMNS,
    evaluation_report_markdown,
    markdown_metric_blocks,
    markdown_table,
)
from .retrieval import encode_captions, encode_gallery, precision_at_1, recall_at_k, retrieval_metrics
from .suite import caption_images, evaluate_captions


__all__ = [
    "CAPTION_METRICS",
    "EVALUATE_MODULES",
    "METRIC_HEADERS",
    "PAPER_CAPTION_COLUMNS",
    "HumanStudy",
    "build_control_sets",
    "build_hard_distractor_sets",
    "candidate_set_accuracy",
    "caption_images",
    "caption_metrics",
    "count_lemmas",
    "encode_captions",
    "encode_gallery",
    "evaluate_captions",
    "evaluate_module_path",
    "evaluation_report_markdown",
    "export_human_study",
    "hard_distractor_accuracy",
    "lmi_markdown_table",
    "local_mutual_information",
    "markdown_metric_blocks",
    "markdown_table",
    "precision_at_1",
    "ptb_tokenize",
    "recall_at_k",
    "retrieval_metrics",
    "score_human_study",
    "simple_tokenize",
    "spice_missing_reason",
    "top_lemmas_by_lmi",
]
