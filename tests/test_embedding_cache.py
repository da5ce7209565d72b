"""The frozen-embedding cache: same rewards, losses and gradients as re-encoding; shared CLIP; what is cached."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import BlipPolicy, DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.blip import tiny_blip
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_config, tiny_open_clip_retriever
from discritune_trl.trainer import DiscriTuneCollator, cache_frozen_embeddings
from discritune_trl.trainer.embedding_cache import shares_clip_encoder


def image_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def make_trainer(tmp_path, cache: bool, dataset=None, **overrides) -> DiscriTuneTrainer:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        max_new_tokens=6,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        cache_embeddings=cache,
        # The cache encodes the same 4 rows together as a training batch does: identical fp32 matmuls.
        cache_batch_size=4,
    )
    settings.update(overrides)
    return DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=DiscriTuneConfig(**settings),
        train_dataset=dataset if dataset is not None else image_dataset(8),
    )


def batch_of(trainer: DiscriTuneTrainer, rows: range) -> dict:
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in rows]))


def shared_clip_policy_and_retriever():
    """A ClipCap whose encoder has the architecture and weights of the retriever's image tower (the paper's setup)."""
    retriever = tiny_open_clip_retriever(seed=0)
    policy = tiny_clipcap_policy(seed=0, clip_model_cfg=tiny_open_clip_config())
    policy.visual.load_state_dict(retriever.model.visual.state_dict())
    return policy, DiscriminativeRewardModel(retriever)


def test_cached_and_uncached_steps_give_identical_rewards_losses_and_gradients(tmp_path):
    cached = make_trainer(tmp_path / "cached", cache=True)
    uncached = make_trainer(tmp_path / "uncached", cache=False)
    assert {"policy_image_embeds", "retriever_image_embeds"} <= set(cached.train_dataset.column_names)
    for rows in (range(0, 4), range(4, 8)):  # two steps: the second subtracts the running mean of the first
        cached_batch, uncached_batch = batch_of(cached, rows), batch_of(uncached, rows)
        assert "policy_pixel_values" not in cached_batch and "retriever_pixel_values" not in cached_batch
        captions = uncached.model.generate_captions(
            pixel_values=uncached_batch["policy_pixel_values"], max_new_tokens=6
        )
        again = cached.model.generate_captions(image_embeds=cached_batch["policy_image_embeds"], max_new_tokens=6)
        assert captions.texts == again.texts
        rewards = uncached.reward_model(captions.texts, pixel_values=uncached_batch["retriever_pixel_values"])
        rewards_cached = cached.reward_model(captions.texts, image_embeds=cached_batch["retriever_image_embeds"])
        torch.testing.assert_close(rewards_cached.rewards, rewards.rewards, rtol=0, atol=0)
        torch.testing.assert_close(rewards_cached.logits, rewards.logits, rtol=0, atol=0)

        losses = []
        for trainer, batch in ((cached, cached_batch), (uncached, uncached_batch)):
            trainer.model.zero_grad()
            loss = trainer.compute_loss(trainer.model, batch)
            loss.backward()
            losses.append(loss)
        torch.testing.assert_close(losses[0], losses[1], rtol=0, atol=0)
        assert cached.running_mean.mean == uncached.running_mean.mean
        for (name, p_cached), (_, p_uncached) in zip(
            cached.model.named_parameters(), uncached.model.named_parameters()
        ):
            if p_uncached.grad is None:
                assert p_cached.grad is None, name
            else:
                torch.testing.assert_close(p_cached.grad, p_uncached.grad, rtol=0, atol=0, msg=name)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in cached.model.mapper.parameters())


def test_shared_clip_is_encoded_once_and_equals_two_encodings(monkeypatch):
    policy, reward_model = shared_clip_policy_and_retriever()
    assert shares_clip_encoder(policy, reward_model)
    dataset = image_dataset(6)
    separate = cache_frozen_embeddings(dataset, policy, reward_model, batch_size=3, share_encoder=False)

    def fail(*args, **kwargs):
        raise AssertionError("the retriever's image tower ran although the policy's encoder is the same CLIP")

    monkeypatch.setattr(reward_model, "encode_images", fail)
    shared = cache_frozen_embeddings(dataset, policy, reward_model, batch_size=3)
    for column in ("policy_image_embeds", "retriever_image_embeds"):
        np.testing.assert_array_equal(np.stack(shared[column]), np.stack(separate[column]))
    np.testing.assert_allclose(np.linalg.norm(np.stack(shared["retriever_image_embeds"]), axis=1), 1.0, rtol=1e-6)


def test_shared_encoder_detection():
    policy, reward_model = shared_clip_policy_and_retriever()
    policy.visual = reward_model.retriever.model.visual
    assert shares_clip_encoder(policy, reward_model)  # the very same module
    other_policy, _ = shared_clip_policy_and_retriever()
    with torch.no_grad():
        next(other_policy.visual.parameters()).add_(1e-3)
    assert not shares_clip_encoder(other_policy, reward_model)  # same architecture, other weights
    assert not shares_clip_encoder(tiny_clipcap_policy(seed=0), reward_model)  # other architecture
    with pytest.raises(ValueError, match="share_encoder=True"):
        cache_frozen_embeddings(image_dataset(2), other_policy, reward_model, share_encoder=True)


def test_saved_cache_is_reused_without_encoding(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, cache=True)
    trainer.train_dataset.save_to_disk(str(tmp_path / "cached"))
    reloaded = datasets.load_from_disk(str(tmp_path / "cached"))

    def fail(*args, **kwargs):
        raise AssertionError("a dataset that already holds the embeddings was encoded again")

    monkeypatch.setattr("discritune_trl.trainer.discritune_trainer.cache_frozen_embeddings", fail)
    again = make_trainer(tmp_path / "again", cache=True, dataset=reloaded)
    # Rows with both embeddings never decode the image: broken image bytes do not matter any more.
    rows = [dict(again.train_dataset[i], image={"bytes": b"broken", "path": None}) for i in range(4)]
    batch = again.data_collator(rows)
    torch.testing.assert_close(batch["policy_image_embeds"], batch_of(trainer, range(4))["policy_image_embeds"])
    again.train()
    assert again.state.global_step == 2


def test_trainable_blip_encoder_caches_only_the_retriever():
    model, processor = tiny_blip()
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    trainable = BlipPolicy.from_blip(model, processor, freeze_vision_encoder=False)
    cached = cache_frozen_embeddings(image_dataset(3), trainable, reward_model)
    assert "policy_image_embeds" not in cached.column_names
    batch = DiscriTuneCollator.from_models(trainable, reward_model)([cached[i] for i in range(3)])
    assert batch["policy_pixel_values"].dim() == 4 and batch["retriever_image_embeds"].shape == (3, 16)

    frozen = BlipPolicy.from_blip(model, processor, freeze_vision_encoder=True)
    features = cache_frozen_embeddings(image_dataset(3), frozen, reward_model)["policy_image_embeds"]
    pixels = frozen.preprocess([image for image in image_dataset(3)["image"]])
    torch.testing.assert_close(torch.as_tensor(np.stack(features)), frozen.encode_images(pixels))


def test_several_retrievers_are_cached_per_retriever():
    retrievers = [tiny_open_clip_retriever(seed=0), tiny_open_clip_retriever(seed=1, embed_dim=8)]
    reward_model = DiscriminativeRewardModel(retrievers)
    policy = tiny_clipcap_policy(seed=0)
    cached = cache_frozen_embeddings(image_dataset(4), policy, reward_model, batch_size=4)
    batch = DiscriTuneCollator.from_models(policy, reward_model)([cached[i] for i in range(4)])
    embeds = batch["retriever_image_embeds"]
    assert [tuple(e.shape) for e in embeds] == [(4, 16), (4, 8)]
    pixels = reward_model.preprocess(image_dataset(4)["image"])
    captions = ["a red circle.", "a blue square.", "two dots.", "a star."]
    torch.testing.assert_close(
        reward_model(captions, image_embeds=embeds).rewards, reward_model(captions, pixel_values=pixels).rewards
    )


def test_unreadable_images_are_dropped_from_the_cache():
    values = list(image_dataset(3).cast_column("image", datasets.Image(decode=False))["image"])
    values.insert(1, {"bytes": b"not an image", "path": None})
    dataset = datasets.Dataset.from_dict({"image": values, "label": [0, 1, 2, 3]})
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever())
    cached = cache_frozen_embeddings(dataset, tiny_clipcap_policy(seed=0), reward_model, batch_size=4)
    assert [row["label"] for row in cached] == [0, 2, 3]
