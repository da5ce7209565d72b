import math

import datasets
import pytest
import torch

from discritune_trl.evaluation.distractors import (
    build_hard_distractor_sets,
    candidate_set_accuracy,
    hard_distractor_accuracy,
)
from discritune_trl.testing.evaluation import PALETTE, ColorRetriever, solid_image


def circle(degrees: list[float]) -> torch.Tensor:
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


def test_sets_by_hand_on_a_circle():
    # Cosine ceiling 0.8 = 36.9 degrees: 10 degrees apart is a near duplicate.
    embeds = circle([0, 10, 50, 60, 70, 100, 180, 200, 250, 305])
    sets = build_hard_distractor_sets(embeds, num_distractors=2)
    assert sets["target_index"] == [0, 1, 5]
    # Image 1 (10 deg) is skipped as a near duplicate of image 0; image 8 is left without enough neighbours.
    assert sets["distractor_indices"] == [[2, 9], [3, 4], [6, 7]]
    assert sets["distractor_similarities"][0] == pytest.approx(
        [math.cos(math.radians(50)), math.cos(math.radians(55))]
    )
    for row in sets:
        assert row["candidate_indices"][row["target_position"]] == row["target_index"]
        assert sorted(row["candidate_indices"]) == sorted([row["target_index"], *row["distractor_indices"]])


def test_ceiling_nearest_and_no_repeat_rules_on_random_embeddings():
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(120, 6, generator=generator)
    near_duplicates = base[:40] + 0.05 * torch.randn(40, 6, generator=generator)
    embeds = torch.nn.functional.normalize(torch.cat([base, near_duplicates]), dim=1)
    sets = build_hard_distractor_sets(embeds, num_distractors=9, max_similarity=0.8)
    assert len(sets) >= 5

    members = [i for row in sets for i in [row["target_index"], *row["distractor_indices"]]]
    assert len(members) == len(set(members)), "an image appears in two sets"

    similarities = embeds @ embeds.T
    used = set()
    for row in sets:
        target, chosen = row["target_index"], row["distractor_indices"]
        assert max(similarities[target, chosen]) <= 0.8 + 1e-6
        # Every eligible image left out is no more similar than the least similar chosen distractor.
        floor = min(similarities[target, chosen])
        eligible = [j for j in range(len(embeds)) if j not in used and j != target and similarities[target, j] <= 0.8]
        left_out = [j for j in eligible if j not in chosen]
        assert all(similarities[target, j] <= floor + 1e-6 for j in left_out)
        used.update([target, *chosen])


def test_num_sets_shuffle_and_save_round_trip(tmp_path):
    embeds = torch.nn.functional.normalize(torch.randn(60, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    sets = build_hard_distractor_sets(embeds, num_distractors=3, num_sets=2)
    assert len(sets) == 2 and sets["set_id"] == [0, 1]
    shuffled = build_hard_distractor_sets(embeds, num_distractors=3, shuffle_targets=True, seed=5)
    assert (
        shuffled["target_index"] == build_hard_distractor_sets(embeds, 3, shuffle_targets=True, seed=5)["target_index"]
    )
    assert shuffled["target_index"][:3] != list(range(3))
    sets.save_to_disk(str(tmp_path / "sets"))
    assert datasets.load_from_disk(str(tmp_path / "sets")).to_dict() == sets.to_dict()


def test_bad_arguments():
    with pytest.raises(ValueError, match="use num_distractors <= 4"):
        build_hard_distractor_sets(torch.eye(5), num_distractors=9)
    with pytest.raises(ValueError, match="num_distractors=0"):
        build_hard_distractor_sets(torch.eye(5), num_distractors=0)


def test_candidate_set_accuracy_ties_are_misses():
    text_embeds = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    candidates = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [0.0, 1.0]]])
    assert candidate_set_accuracy(text_embeds, candidates, torch.tensor([0, 0, 1])) == pytest.approx(1 / 3)


def test_hard_distractor_accuracy_with_a_retriever():
    retriever = ColorRetriever()
    colors = list(PALETTE)
    image_embeds = retriever.encode_images(retriever.preprocess([solid_image(c) for c in colors]))
    sets = build_hard_distractor_sets(image_embeds, num_distractors=4)
    assert len(sets) == 2
    captions = [f"a {colors[sets[0]['target_index']]} square", ""]
    metrics = hard_distractor_accuracy(retriever, captions, sets, image_embeds)
    assert metrics == {"imagecode_accuracy": 0.5, "num_sets": 2, "num_candidates": 5, "num_empty_captions": 1}
    with pytest.raises(ValueError, match="1 captions for 2 sets"):
        hard_distractor_accuracy(retriever, captions[:1], sets, image_embeds)
