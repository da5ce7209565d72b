"""Run by tests/test_checkpoints.py: a full 4-step run, then the same run SIGKILLed while saving checkpoint-3.

`python killed_training.py OUT_DIR` writes `OUT_DIR/full.pt` (the weights and baseline after 4 uninterrupted steps)
and leaves `OUT_DIR/killed/` as a real kill leaves it: checkpoint-1 and checkpoint-2 complete, checkpoint-3 with its
model weights written but not the rest (the process dies with SIGKILL, so nothing after it runs).
"""

import os
import signal
import sys

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import Trainer

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def make_trainer(output_dir: str, dataset) -> DiscriTuneTrainer:
    args = DiscriTuneConfig(
        output_dir=output_dir,
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
    return DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=args,
        train_dataset=dataset,
    )


def main(out_dir: str) -> None:
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))  # as tests/conftest.py: same threads, same bits
    rng = np.random.default_rng(0)  # tests/test_trainer.py's image_dataset(16)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(16)]
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    full = make_trainer(os.path.join(out_dir, "full"), dataset)
    full.args.save_strategy = "no"
    full.train()
    torch.save({"weights": full.model.state_dict(), "baseline": full.running_mean.state_dict()}, f"{out_dir}/full.pt")

    save_rest = Trainer._save_optimizer_and_scheduler

    def killed_while_saving(self, output_dir):
        if self.state.global_step == 3:  # checkpoint-3's weights are on disk; its optimizer and state are not
            os.kill(os.getpid(), signal.SIGKILL)
        return save_rest(self, output_dir)

    Trainer._save_optimizer_and_scheduler = killed_while_saving
    make_trainer(os.path.join(out_dir, "killed"), dataset).train()


if __name__ == "__main__":
    main(sys.argv[1])
