import pytest
import torch

from discritune_trl.evaluation.retrieval import precision_at_1, recall_at_k, retrieval_metrics
from discritune_trl.testing.evaluation import PALETTE, ColorRetriever, solid_image


def ranked_texts(ranks: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images are one-hot; caption i puts its target at rank ranks[i] by scoring ranks[i] - 1 others higher."""
    n = len(ranks)
    image_embeds = torch.eye(n)
    text_embeds = torch.zeros(n, n)
    for i, rank in enumerate(ranks):
        text_embeds[i, i] = 1.0
        others = [j for j in range(n) if j != i][: rank - 1]
        text_embeds[i, others] = 2.0
    return text_embeds, image_embeds


def test_precision_at_1_perfect_and_all_candidates():
    embeds = torch.eye(20)
    # With num_candidates == N every other image is a distractor: the target must never be one of them.
    assert precision_at_1(embeds, embeds, num_candidates=20) == 1.0
    assert precision_at_1(embeds, embeds, num_candidates=2) == 1.0


def test_precision_at_1_every_caption_names_image_zero():
    image_embeds = torch.eye(10)
    text_embeds = torch.zeros(10, 10)
    text_embeds[:, 0] = 1.0
    # Only caption 0 wins; the others either lose to image 0 or tie at 0 with every candidate (a miss).
    assert precision_at_1(text_embeds, image_embeds, num_candidates=5) == pytest.approx(0.1)


def test_precision_at_1_draws_distractors_uniformly_and_reproducibly():
    # Each caption is beaten by exactly one "blocker" image, and wins iff the blocker is not drawn:
    # P(hit) = 1 - (K - 1) / (N - 1).
    n, k = 400, 100
    text_embeds, image_embeds = ranked_texts([2] * n)
    value = precision_at_1(text_embeds, image_embeds, num_candidates=k, seed=3)
    assert value == pytest.approx(1 - (k - 1) / (n - 1), abs=0.08)
    assert precision_at_1(text_embeds, image_embeds, num_candidates=k, seed=3) == value
    other_seeds = {precision_at_1(text_embeds, image_embeds, num_candidates=k, seed=s) for s in range(4, 8)}
    assert len(other_seeds | {value}) > 1
    assert precision_at_1(text_embeds, image_embeds, num_candidates=n) == 0.0


def test_precision_at_1_with_too_few_images_uses_them_all_and_warns(caplog):
    embeds = torch.eye(37)
    assert precision_at_1(embeds, embeds) == 1.0  # 100 asked for: the 37 images
    assert "37 images, fewer than num_candidates=100: P@1 uses all 37 images" in caplog.text
    with pytest.raises(ValueError, match="num_candidates=1"):
        precision_at_1(embeds, embeds, num_candidates=1)


def test_recall_at_k_known_ranks():
    ranks = [1, 1, 2, 3, 5, 6, 7, 10, 11, 12, 12, 1]
    text_embeds, image_embeds = ranked_texts(ranks)
    recalls = recall_at_k(text_embeds, image_embeds, ks=(1, 5, 10))
    assert recalls == {
        "recall_at_1": pytest.approx(3 / 12),
        "recall_at_5": pytest.approx(6 / 12),
        "recall_at_10": pytest.approx(9 / 12),
    }


def test_recall_at_k_ties_count_against_target_and_bad_k():
    image_embeds = torch.eye(4)
    text_embeds = torch.ones(4, 4)  # every image ties
    assert recall_at_k(text_embeds, image_embeds, ks=(1, 3, 4)) == {
        "recall_at_1": 0.0,
        "recall_at_3": 0.0,
        "recall_at_4": 1.0,
    }
    with pytest.raises(ValueError, match=r"\[5\] outside \[1, 4\]"):
        recall_at_k(text_embeds, image_embeds, ks=(1, 5))


def test_targets_pair_several_captions_with_one_image():
    image_embeds = torch.eye(3)
    text_embeds = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    targets = torch.tensor([0, 1, 1, 2])  # the third caption points at the wrong image
    assert precision_at_1(text_embeds, image_embeds, num_candidates=3, targets=targets) == 0.75
    assert recall_at_k(text_embeds, image_embeds, ks=(1,), targets=targets) == {"recall_at_1": 0.75}
    with pytest.raises(ValueError, match="4 captions but 3 images"):
        precision_at_1(text_embeds, image_embeds, num_candidates=3)


def test_retrieval_metrics_with_any_retriever_counts_empty_captions():
    retriever = ColorRetriever()
    colors = list(PALETTE)
    images = [solid_image(color, size=4 + i) for i, color in enumerate(colors)]  # sizes differ on purpose
    captions = [f"a {color} square." for color in colors]
    captions[3] = ""  # scored, counted, and (tying with every image) a miss
    captions[5] = "a red square."  # names the wrong colour
    metrics = retrieval_metrics(retriever, captions, images=images, num_candidates=10, ks=(1, 2))
    assert metrics["precision_at_1"] == pytest.approx(8 / 10)
    assert metrics["recall_at_1"] == pytest.approx(8 / 10)
    assert metrics["num_empty_captions"] == 1
    assert metrics["num_captions"] == 10
    assert metrics["num_candidates"] == 10

    image_embeds = retriever.encode_images(retriever.preprocess(images))
    again = retrieval_metrics(
        retriever, captions, image_embeds=image_embeds, num_candidates=10, ks=(1, 2), batch_size=3
    )
    assert again == metrics


def test_retrieval_metrics_bad_input():
    retriever = ColorRetriever()
    images = [solid_image("red"), solid_image("blue")]
    with pytest.raises(ValueError, match="exactly one of"):
        retrieval_metrics(retriever, ["red", "blue"])
    with pytest.raises(ValueError, match="has 1 image"):
        retrieval_metrics(retriever, ["red"], images=images[:1], ks=(1,))
    with pytest.raises(TypeError, match="single string"):
        retrieval_metrics(retriever, "red", images=images, num_candidates=2)
