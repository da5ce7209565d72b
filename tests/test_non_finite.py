"""Non-finite values from the captioner side stop training before the update, naming the step and the source."""

import os

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from test_trainer import make_trainer


def assert_stopped_before_the_update(trainer, error, step: int) -> None:
    """The error names `step`; the weights are checkpoint-(step - 1)'s, finite, and no later checkpoint exists."""
    assert f"at training step {step}," in str(error.value)
    output_dir = trainer.args.output_dir
    assert sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint")) == [
        f"checkpoint-{n}" for n in range(1, step)
    ]
    saved = load_file(os.path.join(output_dir, f"checkpoint-{step - 1}", "model.safetensors"))
    for name, tensor in trainer.model.state_dict().items():
        assert torch.isfinite(tensor).all(), name
        if name in saved:
            assert torch.equal(tensor, saved[name]), name  # the failing step changed nothing


def test_nan_in_a_cached_policy_embedding_names_the_row(tmp_path):
    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=1, max_steps=4)
    cached = trainer.train_dataset
    assert "policy_image_embeds" in cached.column_names
    rows = cached.to_dict()
    rows["policy_image_embeds"][5] = np.full_like(np.asarray(rows["policy_image_embeds"][5]), np.nan).tolist()
    trainer.train_dataset = datasets.Dataset.from_dict(rows, features=cached.features)
    with pytest.raises(FloatingPointError, match=r"Non-finite loss .* from the cached policy_image_embeds of dataset "
                       r"row\(s\) \[5\]") as error:  # fmt: skip
        trainer.train()
    step = int(str(error.value).split("at training step ")[1].split(",")[0])
    assert step == trainer.state.global_step + 1
    if step > 1:
        assert_stopped_before_the_update(trainer, error, step)


def test_nan_from_the_frozen_encoder_names_the_encoder_and_keeps_the_last_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=1, max_steps=3, cache_embeddings=False)
    policy = trainer.model
    encode = policy.encode_images

    def encoder_with_a_nan(pixel_values):
        embeds = encode(pixel_values)
        if trainer.state.global_step == 1:  # the second step
            embeds = embeds.clone()
            embeds[2] = float("nan")
        return embeds

    policy.encode_images = encoder_with_a_nan
    with pytest.raises(FloatingPointError, match=r"from the policy's frozen image encoder \(encode_images\)") as error:
        trainer.train()
    assert_stopped_before_the_update(trainer, error, step=2)


def test_non_finite_gradient_norm_stops_before_the_update(tmp_path):
    trainer = make_trainer(tmp_path, save_strategy="steps", save_steps=1, max_steps=3, cache_embeddings=False)
    weight = trainer.model.mapper.layers[0].weight
    weight.register_hook(lambda grad: grad * float("inf") if trainer.state.global_step == 1 else grad)
    with pytest.raises(FloatingPointError, match=r"Non-finite gradient norm \(.*\) at training step 2") as error:
        trainer.train()
    assert_stopped_before_the_update(trainer, error, step=2)


def test_nan_in_a_processor_batch_feature_names_the_row(tmp_path):
    """A policy whose preprocess returns a mapping (VLMPolicy's BatchFeature) gets the same named error, not an
    AttributeError from the check itself."""
    from transformers import BatchFeature

    from discritune_trl.trainer.batch import DiscriTuneBatch

    trainer = make_trainer(tmp_path, max_steps=1, cache_embeddings=False)
    pixels = torch.zeros(3, 3, 8, 8)
    pixels[1] = float("nan")
    batch = DiscriTuneBatch(
        image_index=torch.tensor([7, 8, 9]),
        policy_pixel_values=BatchFeature({"pixel_values": pixels, "input_ids": torch.zeros(3, 4, dtype=torch.long)}),
        retriever_image_embeds=torch.zeros(3, 4),
    )
    loss = torch.tensor(float("nan"))
    with pytest.raises(FloatingPointError, match=r"the policy's pixel_values of dataset row\(s\) \[8\]"):
        trainer._check_finite_loss(loss, batch, {}, torch.zeros(3, 2))
