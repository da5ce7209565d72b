"""The one batch layout: `DiscriTuneCollator` builds a `DiscriTuneBatch` from two `preprocess` callables, and the
batch travels through Trainer's and Accelerate's device placement as a dict would."""

import dataclasses

import numpy as np
import pytest
import torch
from accelerate.utils import find_batch_size, send_to_device
from PIL import Image

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever
from discritune_trl.trainer import DiscriTuneBatch, DiscriTuneCollator
from discritune_trl.trainer.batch import INDEX_COLUMN, POLICY_EMBEDS_COLUMN, RETRIEVER_EMBEDS_COLUMN


IMAGES = [Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)) for value in (0, 100, 200)]


def pixels_of(images):
    """A stand-in preprocess: one mean pixel value per image, `[N, 1]`."""
    return torch.tensor([[float(np.asarray(image).mean())] for image in images])


def test_collator_needs_only_the_preprocess_callables():
    collator = DiscriTuneCollator(pixels_of, lambda images: pixels_of(images) * 2)
    rows = [{"image": IMAGES[0], INDEX_COLUMN: 5}, {"image": b"not an image", INDEX_COLUMN: 6}, {"image": IMAGES[2]}]
    batch = collator(rows)
    assert isinstance(batch, DiscriTuneBatch)
    assert batch.image_index.tolist() == [5, -1] and int(batch.num_unreadable_images) == 1
    assert batch.policy_inputs["pixel_values"].flatten().tolist() == [0.0, 200.0]
    assert batch.retriever_inputs["pixel_values"].flatten().tolist() == [0.0, 400.0]
    assert batch.policy_image_embeds is None and batch.retriever_image_embeds is None


def test_cached_columns_are_passed_on_and_the_image_is_not_read():
    collator = DiscriTuneCollator(pixels_of, pixels_of, num_retrievers=2)
    rows = [
        {"image": None, POLICY_EMBEDS_COLUMN: np.ones(4), RETRIEVER_EMBEDS_COLUMN: [np.zeros(3), np.ones(5)]}
        for _ in range(2)
    ]  # image None: decoding it would fail, so it is not decoded
    batch = collator(rows)
    assert batch.policy_inputs["image_embeds"].shape == (2, 4)
    assert [tensor.shape for tensor in batch.retriever_inputs["image_embeds"]] == [(2, 3), (2, 5)]
    with pytest.raises(ValueError, match="hold 2 embedding"):
        DiscriTuneCollator(pixels_of, pixels_of, num_retrievers=3)(rows)


def test_collator_refuses_whole_models_and_names_the_constructor():
    policy = tiny_clipcap_policy(seed=0)
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    with pytest.raises(TypeError, match=r"policy_preprocess .*ClipCapPolicy.*from_models"):
        DiscriTuneCollator(policy, reward_model)
    batch = DiscriTuneCollator.from_models(policy, reward_model)([{"image": image} for image in IMAGES])
    torch.testing.assert_close(batch.policy_pixel_values, policy.preprocess(IMAGES))
    torch.testing.assert_close(batch.retriever_pixel_values, reward_model.preprocess(IMAGES))


def test_batch_moves_like_a_dict_through_trainer_and_accelerate():
    batch = DiscriTuneCollator(pixels_of, pixels_of)(
        [{"image": image, INDEX_COLUMN: i} for i, image in enumerate(IMAGES)]
    )
    # Trainer and Accelerate rebuild a Mapping as type(batch)(dict(batch)); Accelerate sends objects with .to().
    for moved in (type(batch)(dict(batch)), send_to_device(batch, "cpu"), batch.to("cpu")):
        assert isinstance(moved, DiscriTuneBatch)
        assert dict(moved).keys() == dict(batch).keys()
        for name in batch:
            torch.testing.assert_close(moved[name], batch[name])
    assert len(batch) == 4 and "labels" not in batch and find_batch_size(batch) == 3
    cast = batch.to(torch.float64)  # floating tensors only: the index stays an index
    assert cast.policy_pixel_values.dtype == torch.float64 and cast.image_index.dtype == torch.long
    with pytest.raises(TypeError, match=r"no field\(s\) \['labels'\]"):
        DiscriTuneBatch({**batch, "labels": torch.zeros(3)})
    with pytest.raises(ValueError, match="not both"):
        dataclasses.replace(batch, policy_image_embeds=torch.zeros(3, 2))


def test_trainer_accepts_a_custom_collators_dict(tmp_path):
    policy = tiny_clipcap_policy(seed=0)
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    args = DiscriTuneConfig(output_dir=str(tmp_path), report_to="none", cache_embeddings=False)
    trainer = DiscriTuneTrainer(model=policy, reward_model=reward_model, args=args)
    batch = DiscriTuneCollator.from_models(policy, reward_model)([{"image": image} for image in IMAGES])
    prepared = trainer._prepare_inputs(dict(batch))  # what a collator returning a plain dict hands the trainer
    assert isinstance(prepared, DiscriTuneBatch)
    torch.testing.assert_close(prepared.retriever_inputs["pixel_values"], batch.retriever_pixel_values)
