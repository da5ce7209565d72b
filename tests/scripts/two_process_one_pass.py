"""Run by tests/test_one_pass.py under `accelerate launch` with 2 CPU processes.

One SGD step of the one-pass step (`logprobs_from_generation="true"`) and of the two-pass step ("false") from the same
initial policy and batch, and writes per rank the loss, the captions and the gradients the optimizer sees (after DDP's
all-reduce), for the test to compare.
"""

import sys

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import TrainerCallback

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


class GradientRecorder(TrainerCallback):
    """The gradients just before the optimizer step (DDP has averaged them by then)."""

    gradients = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.gradients = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}


def main(out_dir: str) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(8)]
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    record = {}
    for mode in ("false", "true"):
        args = DiscriTuneConfig(
            output_dir=f"{out_dir}/{mode}",
            per_device_train_batch_size=4,
            max_steps=1,
            learning_rate=1e-2,
            optim="sgd",
            max_grad_norm=0.0,
            max_completion_length=6,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            logprobs_from_generation=mode,
        )
        recorder = GradientRecorder()
        trainer = DiscriTuneTrainer(
            model=tiny_clipcap_policy(seed=0),
            reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
            args=args,
            train_dataset=dataset,
            callbacks=[recorder],
        )
        captions = []  # this process's training captions
        generate = trainer._generate

        def recording_generate(*args, generate=generate, captions=captions, **kwargs):
            output = generate(*args, **kwargs)
            captions.extend(output.texts)
            return output

        trainer._generate = recording_generate
        trainer.train()
        record[mode] = {
            "one_pass": trainer._one_pass,
            "loss": next(entry["loss"] for entry in trainer.state.log_history if "loss" in entry),
            "captions": captions,
            "gradients": {name.removeprefix("module."): grad for name, grad in recorder.gradients.items()},
        }
    record["num_processes"] = trainer.accelerator.num_processes
    torch.save(record, f"{out_dir}/rank{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
