"""Every progress bar the library draws: shown by default, all switched off by `disable_tqdm` (trainer: the
embedding-cache pass and its saved shards, the hard-negative bank, evaluation; the evaluation helpers)."""

import datasets
import numpy as np
import pytest
from PIL import Image

from discritune_trl import DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.evaluation import caption_images, encode_captions, encode_gallery, retrieval_metrics
from discritune_trl.rewards import encode_hard_negative_bank
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


BAR = "%|"  # tqdm's bar: " 50%|#####     | 4/8 [...]"


def image_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def config(tmp_path, name: str, disable_tqdm: bool, **overrides) -> DiscriTuneConfig:
    settings = dict(
        output_dir=str(tmp_path / name),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        max_steps=1,
        max_completion_length=4,
        eval_num_beams=2,
        eval_num_candidates=4,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=disable_tqdm,
    )
    return DiscriTuneConfig(**{**settings, **overrides})


def train_and_evaluate(tmp_path, disable_tqdm: bool) -> None:
    cached = DiscriTuneTrainer(  # the cache pass, its shards saved to disk, training, evaluation
        model=tiny_clipcap_policy(seed=0),
        reward_model=tiny_open_clip_retriever(seed=0),
        args=config(tmp_path, "cached", disable_tqdm, embedding_cache_dir=str(tmp_path / "cache")),
        train_dataset=image_dataset(8),
        eval_dataset=image_dataset(4, seed=1),
    )
    cached.train()
    cached.evaluate()
    DiscriTuneTrainer(  # no cache: the hard-negative bank encodes the training images itself
        model=tiny_clipcap_policy(seed=0),
        reward_model=tiny_open_clip_retriever(seed=0),
        args=config(tmp_path, "bank", disable_tqdm, cache_embeddings=False, num_hard_negatives=1),
        train_dataset=image_dataset(8),
    )


@pytest.fixture
def datasets_bars_on():
    """datasets' global progress-bar switch on for the test (another test may have left it off), then as it was."""
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.enable_progress_bars()
    yield
    if not was_enabled:
        datasets.disable_progress_bars()


def test_the_trainer_draws_its_bars_and_disable_tqdm_silences_every_one(tmp_path, capfd, datasets_bars_on):
    train_and_evaluate(tmp_path / "shown", disable_tqdm=False)
    shown = capfd.readouterr().err
    for label in ("Caching frozen image embeddings", "Saving the dataset", "hard-negative bank", "Evaluating"):
        assert label in shown, label
    train_and_evaluate(tmp_path / "silent", disable_tqdm=True)
    silent = capfd.readouterr().err
    assert BAR not in silent, silent[-2000:]
    assert datasets.is_progress_bar_enabled()  # datasets' own setting (on) is restored afterwards


@pytest.mark.parametrize("disable_tqdm", [False, True])
def test_the_evaluation_helpers_show_progress_unless_disabled(disable_tqdm, capfd):
    dataset = image_dataset(6)
    retriever = tiny_open_clip_retriever(seed=0)
    captions = caption_images(tiny_clipcap_policy(seed=0), dataset, batch_size=4, disable_tqdm=disable_tqdm)
    image_embeds = encode_gallery(retriever, dataset, batch_size=4, disable_tqdm=disable_tqdm)
    encode_captions(retriever, captions, disable_tqdm=disable_tqdm)
    retrieval_metrics(
        retriever, captions, image_embeds=image_embeds, num_candidates=3, ks=(1,), disable_tqdm=disable_tqdm
    )
    encode_hard_negative_bank(retriever, dataset, disable_tqdm=disable_tqdm)
    err = capfd.readouterr().err
    labels = ("Captioning", "Encoding the gallery", "Encoding captions", "hard-negative bank")
    if disable_tqdm:
        assert BAR not in err, err[-2000:]
    else:
        assert all(label in err for label in labels), err[-2000:]
        assert "6/6" in err  # counted in images
