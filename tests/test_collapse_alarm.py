"""The collapse alarm: it fires, naming the step and the figures, on a run driven to collapse, and stays silent on a
stable one; `stop_on_collapse` stops training."""

import copy
import logging

import datasets
import pytest
import torch
from transformers import TrainerControl, TrainerState

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.evaluation import ColorRetriever, solid_image
from discritune_trl.trainer.callbacks import CollapseAlarmCallback


COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]


@pytest.fixture(scope="module")
def color_namer():
    """A tiny ClipCap taught by maximum likelihood to name the colour of solid images ("a red square."): a good
    captioner for `ColorRetriever`, the start of the paper's regime."""
    torch.manual_seed(0)
    policy = tiny_clipcap_policy(seed=0)
    pixel_values = policy.preprocess([solid_image(color, 32) for color in COLORS])
    targets = policy.tokenizer([f"a {color} square." for color in COLORS], return_tensors="pt", padding=True)
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(100):
        loss = -policy.caption_log_probs(
            targets["input_ids"], targets["attention_mask"], pixel_values, reduction="mean"
        ).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return policy


def discritune(policy, tmp_path, **overrides) -> DiscriTuneTrainer:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=len(COLORS),  # every step sees every colour: no sampling noise
        max_steps=8,
        max_completion_length=6,
        logging_steps=1,
        collapse_window=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    dataset = datasets.Dataset.from_dict({"image": [solid_image(color, 32) for color in COLORS]})
    return DiscriTuneTrainer(
        model=copy.deepcopy(policy),
        reward_model=DiscriminativeRewardModel(ColorRetriever()),
        args=DiscriTuneConfig(**settings),
        train_dataset=dataset.cast_column("image", datasets.Image()),
    )


def training_logs(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "reward" in entry]


def test_the_alarm_fires_on_a_run_driven_to_collapse(color_namer, tmp_path, caplog):
    trainer = discritune(color_namer, tmp_path, learning_rate=1.0)  # Adam at 1.0 wrecks the captioner at once
    with caplog.at_level(logging.WARNING):
        trainer.train()
    logs = training_logs(trainer)
    assert logs[0]["retrieval/accuracy"] >= 0.6 and logs[-1]["retrieval/accuracy"] <= 0.2  # it did collapse
    alarms = trainer.collapse_alarm.alarms
    assert alarms and alarms[0].step == 2  # the first step whose log fell
    first = logs[1]
    assert {alarm.metric for alarm in alarms if alarm.step == 2} >= {"retrieval/accuracy", "reward"}
    accuracy = next(alarm for alarm in alarms if alarm.metric == "retrieval/accuracy")
    assert accuracy.value == pytest.approx(first["retrieval/accuracy"])
    assert accuracy.level == pytest.approx(logs[0]["retrieval/accuracy"])
    message = next(record.getMessage() for record in caplog.records if "Training collapse at step 2" in record.message)
    assert f"retrieval/accuracy {first['retrieval/accuracy']:.3f}" in message
    assert f"running level {logs[0]['retrieval/accuracy']:.3f}" in message
    assert any("saving it saves the collapsed policy" in record.getMessage() for record in caplog.records)
    assert trainer.state.global_step == 8  # warned, not stopped


def test_the_alarm_is_silent_on_a_stable_run(color_namer, tmp_path, caplog):
    trainer = discritune(color_namer, tmp_path, learning_rate=1e-5)
    with caplog.at_level(logging.WARNING):
        trainer.train()
    logs = training_logs(trainer)
    assert min(entry["retrieval/accuracy"] for entry in logs) >= 0.6  # it did not collapse
    assert trainer.collapse_alarm.alarms == []
    assert "collapse" not in caplog.text


def test_stop_on_collapse_stops_training_at_the_alarm(color_namer, tmp_path):
    trainer = discritune(color_namer, tmp_path, learning_rate=1.0, stop_on_collapse=True)
    trainer.train()
    assert trainer.state.global_step == 2 == trainer.collapse_alarm.alarms[0].step


def test_the_alarm_can_be_switched_off(color_namer, tmp_path):
    trainer = discritune(color_namer, tmp_path, learning_rate=1.0, collapse_alarm=False, max_steps=2)
    assert trainer.collapse_alarm is None
    assert not any(isinstance(callback, CollapseAlarmCallback) for callback in trainer.callback_handler.callbacks)


def feed(callback: CollapseAlarmCallback, curve: list[dict]) -> None:
    state, control = TrainerState(), TrainerControl()
    for step, logs in enumerate(curve, start=1):
        state.global_step = 10 * step
        callback.on_log(None, state, control, logs=logs)


def test_a_slow_slide_is_measured_from_the_top_and_warned_once():
    # The collapse: accuracy 0.93 for 320 steps, then down to 0.63 by step 400 (logged every 10 steps).
    plateau = [{"retrieval/accuracy": 0.93, "reward": -0.25, "reward_std": 0.5, "completions/mean_length": 12.0}]
    slide = [
        {"retrieval/accuracy": a, "reward": r, "reward_std": 0.8, "completions/mean_length": 12.0}
        for a, r in [(0.9, -0.35), (0.86, -0.5), (0.8, -0.7), (0.76, -0.85), (0.7, -1.2), (0.66, -1.5), (0.63, -1.9)]
    ]
    callback = CollapseAlarmCallback(window=5)
    feed(callback, plateau * 32 + slide)
    # The running level of the last five logs would have followed the slide down; the best one stays at the top.
    assert [(alarm.step, alarm.metric) for alarm in callback.alarms] == [
        (360, "reward"),  # -0.85 < -0.25 - 1.0 * 0.5
        (370, "retrieval/accuracy"),  # 0.70 < 0.93 - 0.2
    ]


def test_rising_and_noisy_training_curves_raise_no_alarm():
    curve = [
        {
            "retrieval/accuracy": min(0.87, 0.3 + 0.01 * step) + 0.02 * (-1) ** step,
            "reward": min(-0.6, -3.0 + 0.05 * step) + 0.05 * (-1) ** step,
            "reward_std": 1.2,
            "completions/mean_length": 9.0 + 0.1 * step,
        }
        for step in range(80)
    ]
    callback = CollapseAlarmCallback(window=5)
    feed(callback, curve)
    assert callback.alarms == []


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"collapse_window": 0}, "collapse_window=0"),
        ({"collapse_accuracy_drop": 0.0}, "collapse_accuracy_drop=0.0"),
        ({"collapse_reward_drop": -1.0}, "collapse_reward_drop=-1.0"),
        ({"collapse_length_ratio": 1.5}, "collapse_length_ratio=1.5"),
    ],
)
def test_bad_alarm_settings_fail_at_construction(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DiscriTuneConfig(output_dir=str(tmp_path), **overrides)
