"""REINFORCE baselines: what is subtracted from each caption's reward to reduce gradient variance.

`advantage = reward - baseline`, with the baseline one of (Appendix B.1 of the paper, and RLOO):

- `"mean"`: a running mean of past batch-mean rewards (paper default, as in EGG's `MeanBaseline`): the baseline
  used at step t is the mean of the batch-mean rewards of steps 1..t-1 (0 at the first step), then step t's
  batch mean is folded in: `b_t = b_{t-1} + (mean(r_t) - b_{t-1}) / t`. Under several processes the batch mean is
  the global one, so every process holds the same baseline.
- `"greedy"`: self-critical, the reward of the greedy caption of the same image.
- `"loo"`: leave-one-out, the mean reward of the other `G - 1` captions of the same image.
- `"none"`: no baseline.
"""

from __future__ import annotations

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from ..rewards.distributed import gather_rows


class RunningMeanBaseline(TrainerCallback, ExportableState):
    """Running mean of past batch-mean rewards; part of the trainer state.

    It is a stateful `TrainerCallback` (`ExportableState`): `Trainer` writes its state into every checkpoint's
    `trainer_state.json` (`stateful_callbacks["RunningMeanBaseline"]`), in the same file and the same write as the
    global step, so a checkpoint holds the baseline of exactly its step or is incomplete as a whole.
    """

    def __init__(self, mean: float = 0.0, count: int = 0):
        self.mean = float(mean)
        self.count = int(count)

    def state(self) -> dict:
        """`ExportableState`: what `Trainer` saves in `trainer_state.json`."""
        return {"args": {}, "attributes": self.state_dict()}

    def on_train_begin(self, args, state, control, **kwargs):
        # Trainer updates `stateful_callbacks[name]` at each save; a state resumed from a checkpoint that held no
        # baseline (reset_baseline_on_resume=True) needs the entry too.
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())

    def update(self, batch_mean_reward: float) -> None:
        """Fold one step's (global) batch-mean reward into the running mean."""
        self.count += 1
        self.mean += (float(batch_mean_reward) - self.mean) / self.count

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "count": self.count}

    def load_state_dict(self, state: dict[str, float | int]) -> None:
        self.mean = float(state["mean"])
        self.count = int(state["count"])


def leave_one_out_baseline(rewards: torch.Tensor, num_generations: int) -> torch.Tensor:
    """`[B * G]` rewards (G consecutive per image) -> `[B * G]` mean reward of the other G - 1 captions."""
    if num_generations < 2:
        raise ValueError(f"The leave-one-out baseline needs num_generations >= 2, got {num_generations}.")
    grouped = rewards.view(-1, num_generations)  # [B, G]
    others_mean = (grouped.sum(dim=1, keepdim=True) - grouped) / (num_generations - 1)
    return others_mean.reshape(-1)


def scale_advantages(advantages: torch.Tensor, scale_rewards: str, num_generations: int = 1) -> torch.Tensor:
    """Centre and scale `[B * G]` advantages as TRL does (`GRPOConfig.scale_rewards`, RLOO's `normalize_advantages`).

    - `"none"`: returned as they are (the paper).
    - `"batch"`: `(a - mean(a)) / (std(a) + 1e-4)`, the mean and std over the global batch (every process's
      advantages, gathered with unequal sizes allowed).
    - `"group"`: the same within each image's `num_generations` consecutive captions.
    """
    if scale_rewards == "none":
        return advantages
    if scale_rewards == "group":
        if num_generations < 2:
            raise ValueError(f"scale_rewards='group' needs num_generations >= 2, got {num_generations}.")
        grouped = advantages.view(-1, num_generations)  # [B, G]
        centred = grouped - grouped.mean(dim=1, keepdim=True)
        return (centred / (grouped.std(dim=1, keepdim=True) + 1e-4)).reshape(-1)
    if scale_rewards == "batch":
        global_advantages, _ = gather_rows(advantages.detach().float())  # [sum over processes of B * G]
        std = global_advantages.std() if global_advantages.numel() > 1 else global_advantages.new_zeros(())
        return (advantages - global_advantages.mean()) / (std + 1e-4)
    raise ValueError(f"scale_rewards={scale_rewards!r} is not one of ('none', 'group', 'batch').")
