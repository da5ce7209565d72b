"""TensorBoard events go under `output_dir`, the before-training evaluation among them at step 0."""

import glob
import os

import datasets
import numpy as np
import pytest
from PIL import Image

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def image_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


pytest.importorskip("tensorboard")  # the `tensorboard` extra (installed by .ci/run through `dev`)


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in glob.glob(os.path.join(folder, "**", "events.out.tfevents.*"), recursive=True):
        events = EventAccumulator(path)
        events.Reload()
        for tag in events.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((event.step, event.value) for event in events.Scalars(tag))
    return scalars


def test_every_event_is_under_output_dir_with_the_step_0_evaluation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where transformers' callback used to open ./runs
    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    output_dir = tmp_path / "out"
    trainer = DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=DiscriTuneConfig(
            output_dir=str(output_dir),
            per_device_train_batch_size=4,
            per_device_eval_batch_size=8,
            max_steps=2,
            learning_rate=1e-2,
            max_completion_length=6,
            eval_num_beams=2,
            logging_steps=1,
            save_strategy="no",
            use_cpu=True,
            report_to="tensorboard",
            disable_tqdm=True,
        ),
        train_dataset=image_dataset(8),
        eval_dataset=image_dataset(6, seed=1),
    )
    trainer.evaluate()  # before training, as the examples do
    trainer.train()
    trainer.evaluate()
    assert not (tmp_path / "runs").exists()  # nothing in the current directory
    scalars = read_scalars(output_dir / "runs")
    assert sorted(step for step, _ in scalars["eval/p_at_1"]) == [0, 2]  # before training at step 0, then after
    assert sorted(step for step, _ in scalars["train/reward"]) == [1, 2]
    assert not any(tag.startswith("train/before") for tag in scalars)
