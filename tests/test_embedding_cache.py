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
        max_completion_length=6,
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


# ---- the sharded, parallel, resumable cache pass (issue 15) --------------------------------------------------

BROKEN = 4  # row whose image does not decode


def dataset_with_a_broken_image(count: int = 10) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    rows = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    rows[BROKEN] = {"bytes": b"broken", "path": None}
    return datasets.Dataset.from_dict({"image": rows}).cast_column("image", datasets.Image())


def counting_models():
    policy = tiny_clipcap_policy(seed=0)
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    encoded = []
    original = reward_model.encode_images
    reward_model.encode_images = lambda pixels: encoded.append(len(pixels)) or original(pixels)
    return policy, reward_model, encoded


def _cache_on_two_processes(rank: int, world_size: int, cache_dir: str) -> dict:
    policy, reward_model, encoded = counting_models()
    cached = cache_frozen_embeddings(
        dataset_with_a_broken_image(),
        policy,
        reward_model,
        batch_size=2,
        cache_dir=cache_dir,
        num_workers=2,
        shard_size=3,
        process_index=rank,
        num_processes=world_size,
    )
    return {
        "encoded": sum(encoded),
        "retriever": np.stack(cached["retriever_image_embeds"]),
        "policy": np.stack(cached["policy_image_embeds"]),
    }


@pytest.mark.distributed
def test_two_processes_each_encode_their_share_and_read_the_single_process_cache(tmp_path):
    from discritune_trl.testing.distributed import run_on_processes

    ranks = run_on_processes(_cache_on_two_processes, world_size=2, args=(str(tmp_path / "cache"),))
    policy, reward_model, encoded = counting_models()
    single = cache_frozen_embeddings(dataset_with_a_broken_image(), policy, reward_model, batch_size=2)
    assert len(single) == 9 and sum(encoded) == 9
    # Shards of 3 rows: [0-3) [3-6) on process 0 (the broken row 4 is skipped), [6-9) [9-10) on process 1.
    assert [rank["encoded"] for rank in ranks] == [5, 4]
    for rank in ranks:  # both processes read the whole cache, equal to one process's
        np.testing.assert_allclose(rank["retriever"], np.stack(single["retriever_image_embeds"]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(rank["policy"], np.stack(single["policy_image_embeds"]), rtol=1e-5, atol=1e-6)


def test_a_killed_cache_pass_resumes_without_redoing_finished_shards(tmp_path):
    policy, reward_model, encoded = counting_models()
    original = reward_model.encode_images

    def dies_on_the_third_shard(pixels):
        if len(encoded) == 2:
            raise KeyboardInterrupt("killed")  # as a kill would stop it: after two shards were saved
        return original(pixels)

    reward_model.encode_images = dies_on_the_third_shard
    settings = dict(batch_size=3, shard_size=3, cache_dir=str(tmp_path / "cache"), num_workers=0)
    with pytest.raises(KeyboardInterrupt):
        cache_frozen_embeddings(dataset_with_a_broken_image(), policy, reward_model, **settings)
    policy, reward_model, encoded = counting_models()
    resumed = cache_frozen_embeddings(dataset_with_a_broken_image(), policy, reward_model, **settings)
    assert sum(encoded) == 4  # rows 6-9 only: shards [0-3) and [3-6) were finished before the kill
    reference = cache_frozen_embeddings(dataset_with_a_broken_image(), *counting_models()[:2], batch_size=3)
    assert len(resumed) == len(reference) == 9
    np.testing.assert_allclose(
        np.stack(resumed["retriever_image_embeds"]),
        np.stack(reference["retriever_image_embeds"]),
        rtol=1e-5,
        atol=1e-6,
    )
    # A third run finds every shard and encodes nothing.
    policy, reward_model, encoded = counting_models()
    cache_frozen_embeddings(dataset_with_a_broken_image(), policy, reward_model, **settings)
    assert encoded == []


def test_cache_workers_default_to_at_most_the_available_cores_and_a_given_value_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert (
        DiscriTuneConfig(output_dir=str(tmp_path), use_cpu=True).cache_num_workers == 2
    )  # not torch's "4 > 2" warning
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert DiscriTuneConfig(output_dir=str(tmp_path), use_cpu=True).cache_num_workers == 4
    assert DiscriTuneConfig(output_dir=str(tmp_path), use_cpu=True, cache_num_workers=6).cache_num_workers == 6
