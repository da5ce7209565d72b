"""Callbacks the trainer adds for every user: the collapse alarm.

REINFORCE can collapse: after steps of steady progress the policy drifts into captions the retriever cannot use
(vague ones, one word, or the same caption for every image), and the reward and retrieval accuracy fall. Without a
warning, the collapsed policy is what `train()` leaves in the model and what `save_model()` writes. The
:class:`CollapseAlarmCallback` watches the logged training metrics and says when and how far they fell.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CollapseAlarm:
    """One alarm: at `step`, `metric` was `value`, far below its running `level`."""

    step: int
    metric: str
    value: float
    level: float
    threshold: float

    def describe(self) -> str:
        return f"{self.metric} {self.value:.3f} (running level {self.level:.3f}, alarm below {self.threshold:.3f})"


class _RunningLevel:
    """The best mean of `window` consecutive logged values seen so far, and the companion value (e.g. the reward's
    standard deviation) averaged over the same window."""

    def __init__(self, window: int):
        self.values: deque[float] = deque(maxlen=window)
        self.companions: deque[float] = deque(maxlen=window)
        self.best: float | None = None
        self.best_companion = 0.0

    def add(self, value: float, companion: float = 0.0) -> None:
        self.values.append(value)
        self.companions.append(companion)
        if len(self.values) == self.values.maxlen:
            mean = sum(self.values) / len(self.values)
            if self.best is None or mean > self.best:
                self.best = mean
                self.best_companion = sum(self.companions) / len(self.companions)


class CollapseAlarmCallback(TrainerCallback):
    """Warn, naming the step and the figures, when training collapses; optionally stop training.

    At every training log that holds DiscriTune's metrics, each watched metric is compared with its running level:
    the best mean of `window` consecutive logged values so far (so a slow slide is measured from the top, and
    nothing is compared before `window` logs exist). An alarm is raised when

    - `retrieval/accuracy` is more than `accuracy_drop` below its level (accuracy is in [0, 1]);
    - `reward` is more than `reward_drop` reward standard deviations below its level (the batch standard
      deviation `reward_std`, averaged over the window that set the level), whatever the reward's scale;
    - `completions/mean_length` is below `length_ratio` times its level.

    Each metric warns once when it falls, and again only after it recovered. At the end of training the alarms are
    summarised, with what to do: the weights `train()` ends with are the collapsed policy's unless
    `load_best_model_at_end` restored an earlier checkpoint. The alarms are kept in :attr:`alarms`.

    Args:
        window: logged values per running mean (`DiscriTuneConfig.collapse_window`).
        accuracy_drop: alarm when in-batch retrieval accuracy falls this far below its level.
        reward_drop: alarm when the mean reward falls this many reward standard deviations below its level.
        length_ratio: alarm when the mean caption length falls below this fraction of its level.
        stop: stop training at the first alarm (`control.should_training_stop`).
    """

    def __init__(
        self,
        window: int = 5,
        accuracy_drop: float = 0.2,
        reward_drop: float = 1.0,
        length_ratio: float = 0.5,
        stop: bool = False,
    ):
        if window < 1:
            raise ValueError(f"collapse_window={window} must be >= 1 logged value.")
        self.window = window
        self.accuracy_drop = accuracy_drop
        self.reward_drop = reward_drop
        self.length_ratio = length_ratio
        self.stop = stop
        self.alarms: list[CollapseAlarm] = []
        self._levels: dict[str, _RunningLevel] = {}
        self._alarmed: set[str] = set()

    def _level(self, metric: str) -> _RunningLevel:
        return self._levels.setdefault(metric, _RunningLevel(self.window))

    def _thresholds(self, logs: dict[str, float]) -> dict[str, float]:
        """The alarm threshold of each watched metric in `logs` whose level is known."""
        thresholds = {}
        accuracy, reward, length = (
            self._level("retrieval/accuracy"),
            self._level("reward"),
            self._level("completions/mean_length"),
        )
        if "retrieval/accuracy" in logs and accuracy.best is not None:
            thresholds["retrieval/accuracy"] = accuracy.best - self.accuracy_drop
        if "reward" in logs and reward.best is not None and reward.best_companion > 0:
            thresholds["reward"] = reward.best - self.reward_drop * reward.best_companion
        if "completions/mean_length" in logs and length.best is not None:
            thresholds["completions/mean_length"] = length.best * self.length_ratio
        return thresholds

    def on_log(self, args, state, control, logs: dict[str, Any] | None = None, **kwargs):
        if not logs or "reward" not in logs:  # evaluation logs and the end-of-training summary
            return control
        new_alarms = []
        for metric, threshold in self._thresholds(logs).items():
            value = float(logs[metric])
            if value < threshold:
                if metric not in self._alarmed:
                    self._alarmed.add(metric)
                    new_alarms.append(
                        CollapseAlarm(state.global_step, metric, value, self._levels[metric].best, threshold)
                    )
            else:
                self._alarmed.discard(metric)
        self._level("retrieval/accuracy").add(float(logs.get("retrieval/accuracy", 0.0)))
        self._level("reward").add(float(logs["reward"]), float(logs.get("reward_std", 0.0)))
        self._level("completions/mean_length").add(float(logs.get("completions/mean_length", 0.0)))
        if new_alarms:
            self.alarms.extend(new_alarms)
            action = (
                "Stopping training (stop_on_collapse=True)."
                if self.stop
                else "Training goes on (stop_on_collapse=True stops it)."
            )
            logger.warning(
                "Training collapse at step %d: %s. %s A lower learning_rate, a KL penalty (beta), or selecting the "
                "checkpoint on a validation set (eval_strategy + load_best_model_at_end) avoid keeping a collapsed "
                "policy.",
                state.global_step,
                "; ".join(alarm.describe() for alarm in new_alarms),
                action,
            )
            if self.stop:
                control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if not self.alarms:
            return control
        steps = sorted({alarm.step for alarm in self.alarms})
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            outcome = (
                f"load_best_model_at_end restored {state.best_model_checkpoint} ({args.metric_for_best_model} "
                f"{state.best_metric}); check that it predates the collapse."
            )
        else:
            outcome = (
                "the model now holds the policy of the last step, after the collapse: saving it saves the "
                "collapsed policy. Select the checkpoint on a validation set (eval_strategy + "
                "load_best_model_at_end) or lower the learning rate."
            )
        logger.warning("Training ended after collapse alarm(s) at step(s) %s: %s", steps, outcome)
        return control
