"""Unreadable images: counted in evaluation, never fatal in a training batch, refused when nothing decodes."""

import io

import datasets
import pytest
import torch
from test_trainer import image_dataset, make_config, random_images

from discritune_trl import DiscriminativeRewardModel, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def make_trainer(tmp_path, dataset=None, eval_dataset=None, **overrides) -> DiscriTuneTrainer:
    return DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=make_config(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else image_dataset(8),
        eval_dataset=eval_dataset,
    )


def encoded_dataset(count: int, unreadable: set[int], seed: int = 0) -> datasets.Dataset:
    """`count` PNG images, those at `unreadable` replaced by bytes no decoder reads."""
    values = []
    for index, image in enumerate(random_images(count, seed)):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data = b"not an image at all" if index in unreadable else buffer.getvalue()
        values.append({"bytes": data, "path": None})
    return datasets.Dataset.from_dict({"image": values}).cast_column("image", datasets.Image())


@pytest.mark.parametrize("cache_embeddings", [True, False], ids=["cached", "uncached"])
def test_evaluate_reports_unreadable_images_per_set(tmp_path, cache_embeddings):
    trainer = make_trainer(
        tmp_path,
        cache_embeddings=cache_embeddings,
        eval_dataset={"clean": encoded_dataset(5, set(), seed=1), "broken": encoded_dataset(6, {1, 4}, seed=2)},
    )
    metrics = trainer.evaluate()
    assert metrics["eval_clean_unreadable_images"] == 0 and metrics["eval_clean_num_candidates"] == 5
    assert metrics["eval_broken_unreadable_images"] == 2 and metrics["eval_broken_num_candidates"] == 4
    single = trainer.evaluate(encoded_dataset(6, {0}, seed=3))
    assert single["eval_unreadable_images"] == 1 and single["eval_num_candidates"] == 5


def test_a_batch_left_with_one_or_no_readable_image_is_skipped_and_counted(tmp_path):
    # 7 of 8 images unreadable, batches of 4: one batch keeps at most one image, the other none.
    trainer = make_trainer(tmp_path, dataset=encoded_dataset(8, set(range(1, 8))), cache_embeddings=False)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert trainer.state.global_step == 2 and len(logs) == 2
    assert logs[-1]["data/skipped_batches"] == 2 and logs[-1]["data/unreadable_images"] == 7
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, before[name]), name  # a skipped batch changes nothing


@pytest.mark.parametrize("cache_embeddings", [True, False], ids=["cached", "uncached"])
def test_a_dataset_in_which_nothing_decodes_is_refused_at_construction(tmp_path, cache_embeddings):
    with pytest.raises(ValueError, match=r"train_dataset: none of its 8 images can be decoded.*first error \(row 0\)"):
        make_trainer(tmp_path, dataset=encoded_dataset(8, set(range(8))), cache_embeddings=cache_embeddings)
    with pytest.raises(ValueError, match=r"eval_dataset\['shifted'\]: none of its 3 images can be decoded"):
        make_trainer(
            tmp_path,
            cache_embeddings=cache_embeddings,
            eval_dataset={"in_domain": encoded_dataset(3, set()), "shifted": encoded_dataset(3, {0, 1, 2})},
        )
