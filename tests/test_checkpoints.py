"""Crash-safe checkpoints: a kill while saving, a checkpoint without baseline, another architecture, garbage state.

One real run, SIGKILLed while writing checkpoint-3 (tests/scripts/killed_training.py), provides the checkpoints every
test here starts from.
"""

import json
import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import BlipPolicy, DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.blip import tiny_blip
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def image_dataset(count: int) -> datasets.Dataset:
    rng = np.random.default_rng(0)  # the images of tests/scripts/killed_training.py
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


def make_trainer(output_dir, model=None, **overrides) -> DiscriTuneTrainer:
    settings = dict(  # the settings of tests/scripts/killed_training.py
        output_dir=str(output_dir),
        per_device_train_batch_size=4,
        max_steps=4,
        learning_rate=1e-2,
        max_completion_length=6,
        logging_steps=1,
        save_strategy="steps",
        save_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        cache_embeddings=False,
    )
    settings.update(overrides)
    return DiscriTuneTrainer(
        model=model if model is not None else tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=DiscriTuneConfig(**settings),
        train_dataset=image_dataset(16),
    )


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """`(folder, full)`: `folder/killed` as a SIGKILL during checkpoint-3's save left it; `full`, the weights and
    baseline of the same 4 steps run without interruption."""
    folder = tmp_path_factory.mktemp("killed_run")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    script = os.path.join(ROOT, "tests", "scripts", "killed_training.py")
    result = subprocess.run(
        [sys.executable, script, str(folder)], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == -9, result.stdout[-2000:] + result.stderr[-2000:]  # died of SIGKILL
    return folder, torch.load(folder / "full.pt", weights_only=True)


def copy_checkpoint(killed_run, tmp_path, step: int = 2) -> str:
    target = tmp_path / "out" / f"checkpoint-{step}"
    shutil.copytree(killed_run[0] / "killed" / f"checkpoint-{step}", target)
    return str(target)


def edit_trainer_state(checkpoint: str, edit) -> str:
    path = os.path.join(checkpoint, "trainer_state.json")
    with open(path) as handle:
        state = json.load(handle)
    edit(state)
    with open(path, "w") as handle:
        json.dump(state, handle)
    return path


def snapshot(trainer: DiscriTuneTrainer) -> tuple:
    weights = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    return weights, trainer.running_mean.state_dict(), trainer.state.global_step


def assert_unchanged(trainer: DiscriTuneTrainer, before: tuple) -> None:
    weights, baseline, step = before
    assert trainer.running_mean.state_dict() == baseline and trainer.state.global_step == step
    for name, parameter in trainer.model.named_parameters():
        assert torch.equal(parameter, weights[name]), name


def test_a_kill_while_saving_resumes_exactly_from_the_newest_complete_checkpoint(killed_run, caplog):
    folder, full = killed_run
    killed = folder / "killed"
    assert sorted(name for name in os.listdir(killed) if name.startswith("checkpoint")) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]
    assert "model.safetensors" in os.listdir(killed / "checkpoint-3")  # cut off after the weights...
    assert "trainer_state.json" not in os.listdir(killed / "checkpoint-3")  # ...before the state

    trainer = make_trainer(killed)
    trainer.train(resume_from_checkpoint=True)
    assert f"Skipping the incomplete checkpoint {killed / 'checkpoint-3'}" in caplog.text
    assert trainer.state.global_step == 4
    # 2 steps + SIGKILL + resume + 2 steps == 4 uninterrupted steps, bit for bit: weights and baseline.
    assert trainer.running_mean.state_dict() == full["baseline"]
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(tensor, full["weights"][name]), name


def test_a_checkpoint_without_the_baseline_state_is_refused_unless_reset(killed_run, tmp_path):
    checkpoint = copy_checkpoint(killed_run, tmp_path)
    edit_trainer_state(checkpoint, lambda state: state["stateful_callbacks"].pop("RunningMeanBaseline"))
    trainer = make_trainer(tmp_path / "out")
    before = snapshot(trainer)
    with pytest.raises(
        ValueError, match=f"{checkpoint} holds no running-mean baseline state.*reset_baseline_on_resume"
    ):
        trainer.train(resume_from_checkpoint=checkpoint)
    assert_unchanged(trainer, before)

    trainer = make_trainer(tmp_path / "out", reset_baseline_on_resume=True)
    trainer.train(resume_from_checkpoint=checkpoint)
    assert trainer.state.global_step == 4 and trainer.running_mean.count == 2  # restarted at step 2
    resumed_state = json.load(open(tmp_path / "out" / "checkpoint-4" / "trainer_state.json"))
    assert resumed_state["stateful_callbacks"]["RunningMeanBaseline"]["attributes"]["count"] == 2


def test_a_checkpoint_of_another_architecture_is_refused_naming_both(killed_run, tmp_path):
    checkpoint = copy_checkpoint(killed_run, tmp_path)
    blip = make_trainer(tmp_path / "blip", model=BlipPolicy.from_blip(*tiny_blip()))
    before = snapshot(blip)
    with pytest.raises(ValueError, match=r"holds a 'clipcap' model \(ClipCapPolicy\).*trains a 'blip' model"):
        blip.train(resume_from_checkpoint=checkpoint)
    assert_unchanged(blip, before)

    # The same class with another mapper: named tensor by tensor, nothing loaded.
    other_mapper = make_trainer(tmp_path / "other", model=tiny_clipcap_policy(seed=0, prefix_length=3))
    before = snapshot(other_mapper)
    with pytest.raises(ValueError, match=r"model.safetensors does not fit ClipCapPolicy \(other shape: mapper"):
        other_mapper.train(resume_from_checkpoint=checkpoint)
    assert_unchanged(other_mapper, before)


def test_unreadable_checkpoint_state_names_its_path(killed_run, tmp_path):
    checkpoint = copy_checkpoint(killed_run, tmp_path)
    trainer = make_trainer(tmp_path / "out")
    before = snapshot(trainer)

    def garbage_baseline(state):
        state["stateful_callbacks"]["RunningMeanBaseline"]["attributes"] = {"mean": "not a number", "count": 2}

    path = edit_trainer_state(checkpoint, garbage_baseline)
    with pytest.raises(ValueError, match=f"baseline state in {path}.*'not a number'"):
        trainer.train(resume_from_checkpoint=checkpoint)
    with open(path, "w") as handle:
        handle.write('{"global_step": 2, "stateful_')  # cut off mid-write
    with pytest.raises(ValueError, match=f"Cannot resume from {checkpoint}: {path} is unreadable"):
        trainer.train(resume_from_checkpoint=checkpoint)
    with pytest.raises(ValueError, match="holds no complete checkpoint-N folder"):
        trainer.train(resume_from_checkpoint=True)  # its only checkpoint is the broken one
    assert_unchanged(trainer, before)


def test_a_legacy_baseline_file_is_read_and_a_garbage_one_names_its_path(killed_run, tmp_path):
    from discritune_trl.trainer.checkpoints import read_baseline_state

    checkpoint = copy_checkpoint(killed_run, tmp_path)
    saved = {}
    edit_trainer_state(checkpoint, lambda state: saved.update(state["stateful_callbacks"].pop("RunningMeanBaseline")))
    assert read_baseline_state(checkpoint, "RunningMeanBaseline") is None
    legacy = os.path.join(checkpoint, "discritune_baseline.json")  # written beside checkpoints by earlier versions
    with open(legacy, "w") as handle:
        json.dump(saved["attributes"], handle)
    assert read_baseline_state(checkpoint, "RunningMeanBaseline") == saved["attributes"]
    with open(legacy, "w") as handle:
        handle.write("{not json")
    with pytest.raises(ValueError, match=f"The running-mean baseline file {legacy} is unreadable"):
        read_baseline_state(checkpoint, "RunningMeanBaseline")
