"""Text-to-image retrieval P@1 with random candidates and recall@k, as an `evaluate` module."""

import datasets
import evaluate
import torch

from discritune_trl.evaluation.retrieval import precision_at_1, recall_at_k


_DESCRIPTION = """\
Text-to-image retrieval from retriever embeddings: P@1 where each caption's target competes with
`num_candidates - 1` other images drawn at random with a fixed seed (DiscriTune's Table 1 protocol), and
recall@k over the whole gallery. Row i of `text_embeds` describes row i of `image_embeds`. Ties count as misses.
"""

_KWARGS_DESCRIPTION = """
Args:
    text_embeds (`list[list[float]]`): [N, D] caption embeddings (e.g. from `Retriever.encode_texts`).
    image_embeds (`list[list[float]]`): [N, D] image embeddings of the same retriever, row-aligned.
    num_candidates (`int`, optional): candidates per caption for P@1, default 100.
    seed (`int`, optional): seed for drawing distractors, default 0.
    ks (`list[int]`, optional): recall cut-offs, default (1, 5, 10).
Returns:
    `dict` with precision_at_1, recall_at_{k} (fractions) and num_candidates.
"""

_CITATION = """\
@inproceedings{dessi2023cross,
  title={Cross-Domain Image Captioning with Discriminative Finetuning},
  author={Dess{\\`\\i}, Roberto and Bevilacqua, Michele and Gualdoni, Eleonora and Carraz Rakotonirina, Nathana{\\"e}l and Franzon, Francesca and Baroni, Marco},
  booktitle={CVPR},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TextToImageRetrieval(evaluate.Metric):
    """P@1 against random candidates and recall@k from paired caption and image embeddings."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "text_embeds": datasets.Sequence(datasets.Value("float32")),
                    "image_embeds": datasets.Sequence(datasets.Value("float32")),
                }
            ),
        )

    def _compute(self, text_embeds, image_embeds, num_candidates=100, seed=0, ks=(1, 5, 10)):
        text_embeds = torch.as_tensor(text_embeds, dtype=torch.float32)  # [N, D]
        image_embeds = torch.as_tensor(image_embeds, dtype=torch.float32)  # [N, D]
        return {
            "precision_at_1": precision_at_1(text_embeds, image_embeds, num_candidates=num_candidates, seed=seed),
            **recall_at_k(text_embeds, image_embeds, ks=ks),
            "num_candidates": num_candidates,
        }
