"""The reward settings have one owner: the config builds the reward model, or a passed one is the authority."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer, build_reward_model
from discritune_trl.rewards import check_reward_model_matches, encode_hard_negative_bank, user_set_reward_settings
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def image_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def make_config(tmp_path, **overrides) -> DiscriTuneConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-3,
        max_completion_length=4,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
    )
    settings.update(overrides)
    return DiscriTuneConfig(**settings)


def record_candidate_counts(monkeypatch) -> list[int]:
    """Widths of the `logits` every reward-model call returns (in-batch candidates + mined hard negatives)."""
    widths = []
    forward = DiscriminativeRewardModel.forward

    def recording_forward(self, *args, **kwargs):
        output = forward(self, *args, **kwargs)
        widths.append(output.logits.shape[1])
        return output

    monkeypatch.setattr(DiscriminativeRewardModel, "forward", recording_forward)
    return widths


@pytest.mark.parametrize("cache_embeddings", [True, False], ids=["cached", "uncached"])
def test_num_hard_negatives_in_the_config_adds_mined_candidates(tmp_path, monkeypatch, cache_embeddings):
    widths = record_candidate_counts(monkeypatch)
    train = image_dataset(8)
    trainer = DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=tiny_open_clip_retriever(seed=0),
        args=make_config(tmp_path, num_hard_negatives=3, cache_embeddings=cache_embeddings),
        train_dataset=train,
    )
    reward_model = trainer.reward_model
    assert reward_model.num_hard_negatives == 3 and reward_model.similarity_ceiling == 0.8
    bank = getattr(reward_model, reward_model.hard_negative_banks[0])
    # The bank is the training images, as the retriever embeds them (from the cache or encoded once).
    retriever = reward_model.retriever
    expected = retriever.encode_images(retriever.preprocess(list(train["image"])))
    torch.testing.assert_close(bank, expected, atol=1e-5, rtol=1e-5)
    trainer.train()
    assert widths == [4 + 3]  # 4 in-batch images + 3 mined
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["reward/num_candidates"] == 7


def test_a_streaming_train_set_with_hard_negatives_fails_at_construction(tmp_path):
    stream = image_dataset(8).to_iterable_dataset()
    with pytest.raises(ValueError, match="streaming.*num_hard_negatives=0"):
        DiscriTuneTrainer(
            model=tiny_clipcap_policy(seed=0),
            reward_model=tiny_open_clip_retriever(seed=0),
            args=make_config(tmp_path, num_hard_negatives=2),
            train_dataset=stream,
        )
    with pytest.raises(ValueError, match="streaming"):
        encode_hard_negative_bank(tiny_open_clip_retriever(seed=0), stream)


def test_build_reward_model_encodes_the_bank_once_per_retriever(tmp_path):
    train = image_dataset(6)
    retrievers = [tiny_open_clip_retriever(seed=0), tiny_open_clip_retriever(seed=1)]
    args = make_config(tmp_path, num_hard_negatives=2, hard_negative_similarity_ceiling=0.9, reward_type="accuracy")
    reward_model = build_reward_model(retrievers, args, train_dataset=train, batch_size=4)
    assert (reward_model.reward_type, reward_model.num_hard_negatives, reward_model.similarity_ceiling) == (
        "accuracy",
        2,
        0.9,
    )
    for index, retriever in enumerate(retrievers):
        expected = retriever.encode_images(retriever.preprocess(list(train["image"])))
        torch.testing.assert_close(getattr(reward_model, f"hard_negative_bank_{index}"), expected)


def test_a_passed_reward_model_that_disagrees_with_the_config_is_refused(tmp_path):
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))  # log_prob, no hard negatives
    for field, value, attribute in (
        ("num_hard_negatives", 5, "num_hard_negatives=0"),
        ("reward_type", "accuracy", "reward_type='log_prob'"),
        ("hard_negative_similarity_ceiling", 0.5, "similarity_ceiling=0.8"),
    ):
        with pytest.raises(ValueError, match=rf"{field}={value!r} in the config.*{attribute}.*pass the retriever"):
            DiscriTuneTrainer(
                model=tiny_clipcap_policy(seed=0),
                reward_model=reward_model,
                args=make_config(tmp_path, **{field: value}),
                train_dataset=image_dataset(8),
            )


def test_a_passed_reward_model_keeps_its_settings_when_the_config_leaves_them_at_default(tmp_path):
    bank = torch.randn(10, tiny_open_clip_retriever(seed=0).embed_dim)
    reward_model = DiscriminativeRewardModel(
        tiny_open_clip_retriever(seed=0), reward_type="accuracy", num_hard_negatives=2, hard_negative_bank=bank
    )
    args = make_config(tmp_path)
    assert user_set_reward_settings(args) == {}
    check_reward_model_matches(reward_model, make_config(tmp_path, reward_type="accuracy"))  # agrees: fine
    trainer = DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0), reward_model=reward_model, args=args, train_dataset=image_dataset(8)
    )
    assert trainer.reward_model is reward_model and reward_model.num_hard_negatives == 2
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    # The card describes the reward model used, not the config's defaults.
    assert '"reward_type": "accuracy"' in card and '"num_hard_negatives": 2' in card
