"""Candidate pools: the global batch split into pools of `pool_size` images, each caption scored against its own."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.rewards.pools import PoolLayout, pool_bounds, pool_layout
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.distributed import run_on_processes
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def _pixels(count: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(count, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def _captions(count: int, offset: int = 0) -> list[str]:
    return [f"a photo of thing {offset + i}." for i in range(count)]


# ---- the layout ---------------------------------------------------------------------------------------------


def test_pool_layout_per_device_across_devices_global_and_refused():
    assert pool_layout(100, 100, 1) == PoolLayout(None, 1, 1, 100)  # the paper: one pool of 100, nothing gathered
    assert pool_layout(100, 1000, 1) == PoolLayout(100, 1, 10, 100)  # one device, ten pools of 100
    assert pool_layout(100, 100, 8) == PoolLayout(100, 1, 8, 100)  # per device: no embedding crosses processes
    assert pool_layout(100, 25, 8) == PoolLayout(None, 4, 2, 100)  # 4 consecutive processes per pool
    assert pool_layout(-1, 100, 8) == PoolLayout(None, 8, 1, 800)  # the whole global batch, explicitly
    assert pool_layout(100, 4, 2) == PoolLayout(None, 2, 1, 8)  # a global batch smaller than a pool is one pool
    with pytest.raises(ValueError, match=r"global batch of 300 images \(per_device_train_batch_size=150 x 2"):
        pool_layout(100, 150, 2)
    with pytest.raises(ValueError, match="per_device_train_batch_size=30 x 10.*multiple of 100.*pool_size=-1"):
        pool_layout(100, 30, 10)  # pools would straddle devices unevenly
    with pytest.raises(ValueError, match="pool_size=0 must be >= 1"):
        pool_layout(0, 100, 1)


def test_pool_bounds_keep_the_number_of_pools_when_images_are_lost():
    assert pool_bounds(200, 100) == [(0, 100), (100, 200)]
    assert pool_bounds(199, 100) == [(0, 100), (100, 199)]  # one unreadable image: the last pool has 99
    assert pool_bounds(297, 100) == [(0, 99), (99, 198), (198, 297)]  # three lost: one per pool
    assert pool_bounds(3, 2) == [(0, 3)]  # never a pool of one while two can share
    assert pool_bounds(7, None) == [(0, 7)] and pool_bounds(0, 4) == []


# ---- the reward model ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def retriever():
    return tiny_open_clip_retriever(seed=0)


def test_each_pool_is_scored_like_a_batch_of_its_own(retriever):
    reward_model = DiscriminativeRewardModel(retriever)
    pixels = _pixels(12)
    captions = [caption for caption in _captions(12) for _ in range(2)]  # two captions per image
    pooled = reward_model(captions, pixel_values=pixels, pool_size=4)
    assert pooled.logits.shape == (24, 4) and pooled.pool_sizes.tolist() == [4, 4, 4]
    for pool in range(3):
        alone = reward_model(captions[8 * pool : 8 * (pool + 1)], pixel_values=pixels[4 * pool : 4 * (pool + 1)])
        rows = slice(8 * pool, 8 * (pool + 1))
        torch.testing.assert_close(pooled.rewards[rows], alone.rewards)
        torch.testing.assert_close(pooled.logits[rows], alone.logits)
        assert pooled.target_indices[rows].tolist() == alone.target_indices.tolist()
    # One pool of all images is exactly the whole batch (the paper's batch of 100 = one pool of 100).
    whole = reward_model(captions, pixel_values=pixels)
    assert torch.equal(reward_model(captions, pixel_values=pixels, pool_size=12).rewards, whole.rewards)
    assert not torch.allclose(pooled.rewards, whole.rewards)  # fewer distractors: a different task


def test_uneven_pools_pad_with_minus_infinity_and_hard_negatives_join_each_pool(retriever):
    bank = retriever.encode_images(_pixels(20, seed=1))
    reward_model = DiscriminativeRewardModel(
        retriever, num_hard_negatives=2, hard_negative_bank=bank, similarity_ceiling=None
    )
    pixels, captions = _pixels(7), _captions(7)  # 8 images in pools of 4, one unreadable: pools of 4 and 3
    pooled = reward_model(captions, pixel_values=pixels, pool_size=4)
    assert pooled.logits.shape == (7, 4 + 2) and pooled.pool_sizes.tolist() == [4, 3]
    assert torch.isinf(pooled.logits[4:, 3]).all() and torch.isfinite(pooled.logits[:4, :4]).all()
    for rows, images in [(slice(0, 4), slice(0, 4)), (slice(4, 7), slice(4, 7))]:
        alone = reward_model(captions[rows], pixel_values=pixels[images])  # its pool + its own 2 mined negatives
        torch.testing.assert_close(pooled.rewards[rows], alone.rewards)
        torch.testing.assert_close(pooled.accuracy[rows], alone.accuracy)


SPLIT = (4, 3)  # images on rank 0 and rank 1: rank 1 lost one


def _two_process_pools(rank: int, world_size: int) -> dict:
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    start = sum(SPLIT[:rank])
    pixels, captions = _pixels(sum(SPLIT))[start : start + SPLIT[rank]], _captions(SPLIT[rank], start)
    results = {}
    for name, kwargs in {
        "per_device": {"pool_size": 2, "processes_per_pool": 1},
        "across": {"processes_per_pool": 2},
        "default": {},
    }.items():
        output = reward_model(captions, pixel_values=pixels, **kwargs)
        results[name] = (output.rewards, output.logits, output.target_indices, output.pool_sizes)
    return results


@pytest.mark.distributed
def test_two_processes_pools_per_device_and_across_devices_with_unequal_sizes(retriever):
    per_rank = run_on_processes(_two_process_pools, world_size=2)
    reward_model = DiscriminativeRewardModel(retriever)
    pixels = _pixels(sum(SPLIT))
    # Per device: each process's pools are its own images only, as if it were alone.
    for rank, (start, count) in enumerate([(0, 4), (4, 3)]):
        alone = reward_model(
            _captions(count, start), pixel_values=pixels[start : start + count], pool_size=2, processes_per_pool=1
        )
        torch.testing.assert_close(per_rank[rank]["per_device"][0], alone.rewards)
    assert per_rank[0]["per_device"][3].tolist() == [2, 2] and per_rank[1]["per_device"][3].tolist() == [3]
    # Across both processes (and by default): one pool of the 7 images, as one process with all of them.
    everything = reward_model(_captions(7), pixel_values=pixels)
    for name in ("across", "default"):
        torch.testing.assert_close(torch.cat([r[name][0] for r in per_rank]), everything.rewards)
        assert torch.cat([r[name][2] for r in per_rank]).tolist() == everything.target_indices.tolist()


def test_bad_pool_arguments(retriever):
    reward_model = DiscriminativeRewardModel(retriever)
    with pytest.raises(ValueError, match="pool_size=0 must be >= 1"):
        reward_model(_captions(2), pixel_values=_pixels(2), pool_size=0)
    with pytest.raises(ValueError, match="processes_per_pool=2 must be >= 1 and divide the 1 process"):
        reward_model(_captions(2), pixel_values=_pixels(2), processes_per_pool=2)
    local_only = DiscriminativeRewardModel(retriever, gather_across_processes=False)
    with pytest.raises(ValueError, match="processes_per_pool=2 gathers.*gather_across_processes=False"):
        local_only(_captions(2), pixel_values=_pixels(2), processes_per_pool=2)
    with pytest.raises(ValueError, match="single image.*no hard negatives"):
        reward_model(_captions(3), pixel_values=_pixels(3), pool_size=1)


# ---- the trainer --------------------------------------------------------------------------------------------


def _dataset(count: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def _trainer(tmp_path, **overrides) -> DiscriTuneTrainer:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        max_steps=1,
        max_completion_length=5,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        cache_embeddings=False,
    )
    settings.update(overrides)
    return DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=DiscriTuneConfig(**settings),
        train_dataset=_dataset(8),
    )


def _record_calls(reward_model) -> list:
    seen, original = [], reward_model.forward
    reward_model.forward = lambda *a, **k: seen.append((a, k, original(*a, **k))) or seen[-1][2]
    return seen


def test_trainer_scores_each_caption_in_its_pool_and_logs_the_pools(tmp_path):
    rewards = {}
    for pool_size in (4, -1, 8):
        trainer = _trainer(tmp_path / str(pool_size), pool_size=pool_size)
        seen = _record_calls(trainer.reward_model)
        trainer.train()
        args, kwargs, output = seen[0]
        rewards[pool_size] = output.rewards
        log = next(entry for entry in trainer.state.log_history if "pool/size" in entry)
        if pool_size == 4:  # two pools of 4: each caption against its own pool's 4 images
            assert output.logits.shape == (8, 4)
            assert log["pool/size"] == 4 and log["pool/count"] == 2
            pixels = kwargs["pixel_values"]
            for pool in range(2):
                alone = trainer.reward_model(
                    args[0][4 * pool : 4 * pool + 4], pixel_values=pixels[4 * pool : 4 * pool + 4]
                )
                torch.testing.assert_close(output.rewards[4 * pool : 4 * pool + 4], alone.rewards)
        else:
            assert output.logits.shape == (8, 8) and log["pool/size"] == 8 and log["pool/count"] == 1
    # pool_size=8 on a batch of 8 and pool_size=-1 are the same single pool: the same rewards, bit for bit.
    assert torch.equal(rewards[8], rewards[-1])


def test_trainer_refuses_pools_it_cannot_form(tmp_path):
    with pytest.raises(ValueError, match=r"global batch of 6 images \(per_device_train_batch_size=6 x 1"):
        _trainer(tmp_path, per_device_train_batch_size=6, pool_size=4)
    with pytest.raises(ValueError, match="pool_size=0 must be >= 1"):
        DiscriTuneConfig(output_dir=str(tmp_path), pool_size=0)
    with pytest.raises(
        ValueError,
        match=r"per_device_train_batch_size=8 on 1 process\(es\) \(pool_size=1: pools of 1 image\) leaves no",
    ):
        _trainer(tmp_path, pool_size=1)


def test_fsdp_or_deepspeed_asked_on_a_machine_without_gpu_is_refused_not_ignored(tmp_path, monkeypatch):
    """Accelerate 1.x runs an FSDP / DeepSpeed launch on CPU processes as plain DDP; the config says so instead."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: FSDP can run")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match=r"asked for FSDP \(ACCELERATE_USE_FSDP=true\).*no GPU.*cpu_2proc.yaml"):
        DiscriTuneConfig(output_dir=str(tmp_path))
