"""COCO caption toolkit metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr-D, SPICE when present) as an `evaluate` module."""

import datasets
import evaluate

from discritune_trl.evaluation.captioning import CAPTION_METRICS, caption_metrics


_DESCRIPTION = """\
BLEU-1..4, METEOR, ROUGE-L and CIDEr-D computed with the COCO caption toolkit (pycocoevalcap) after PTB
tokenisation; SPICE when its Stanford CoreNLP jars are installed, otherwise listed under `skipped` with the
reason. Scores are on the toolkit's scale (CIDEr-D in [0, 10], the others in [0, 1]).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): one generated caption per image ('' is scored and counted).
    references (`list[list[str]]`): the reference captions of each image.
    metrics (`list[str]`, optional): subset of ("bleu", "meteor", "rouge_l", "cider", "spice").
    tokenizer (`str`, optional): "ptb" (default, needs Java) or "simple" (pure Python, no METEOR/SPICE).
Returns:
    `dict` with bleu_1..bleu_4, meteor, rouge_l, cider, spice (those computed), num_predictions,
    num_empty_predictions, tokenizer and skipped ({metric: reason}).
"""

_CITATION = """\
@inproceedings{chen2015microsoft,
  title={Microsoft COCO Captions: Data Collection and Evaluation Server},
  author={Chen, Xinlei and Fang, Hao and Lin, Tsung-Yi and Vedantam, Ramakrishna and Gupta, Saurabh and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle={arXiv:1504.00325},
  year={2015}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CocoCaption(evaluate.Metric):
    """COCO caption toolkit metrics over (prediction, references) pairs."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/salaniz/pycocoevalcap"],
        )

    def _compute(self, predictions, references, metrics=CAPTION_METRICS, tokenizer="ptb"):
        return caption_metrics(predictions, references, metrics=metrics, tokenizer=tokenizer)
