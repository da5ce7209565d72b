"""Run by tests/test_trainer_distributed.py under `accelerate launch` with 2 CPU processes.

One step on 2 processes x 100 images, with pools of 100 (each process's batch is its own pool) and with
`pool_size=-1` (every caption against all 200 images), recording per rank the step's captions, retriever pixels,
rewards, the logged pool metrics and the weights. Optional arguments: the images per process and the pool sizes
(`8 8,-1`), as the two-"machine" test runs it.
"""

import sys

import datasets
import numpy as np
import torch
from PIL import Image

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


class RecordingRewardModel(DiscriminativeRewardModel):
    first_call = None

    def forward(self, captions, pixel_values=None, image_embeds=None, **kwargs):
        output = super().forward(captions, pixel_values=pixel_values, image_embeds=image_embeds, **kwargs)
        if self.first_call is None:
            self.first_call = {
                "captions": list(captions),
                "pixel_values": pixel_values.detach().cpu(),
                "rewards": output.rewards.detach().cpu(),
                "num_candidates": output.logits.shape[1],
            }
        return output


def main(out_dir: str, per_device: str = "100", pool_sizes: str = "100,-1") -> None:
    per_device_batch = int(per_device)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(2 * per_device_batch)]
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    results = {}
    for pool_size in [int(size) for size in pool_sizes.split(",")]:
        args = DiscriTuneConfig(
            output_dir=f"{out_dir}/pool{pool_size}",
            per_device_train_batch_size=per_device_batch,
            pool_size=pool_size,
            max_steps=1,
            max_completion_length=4,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            cache_embeddings=False,  # the script records the retriever pixels each process sees
        )
        reward_model = RecordingRewardModel(tiny_open_clip_retriever(seed=0))
        trainer = DiscriTuneTrainer(
            model=tiny_clipcap_policy(seed=0), reward_model=reward_model, args=args, train_dataset=dataset
        )
        trainer.train()
        weights = {
            name: p.detach().cpu() for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
        }
        results[pool_size] = {
            "first_call": reward_model.first_call,
            "log_history": trainer.state.log_history,
            "num_processes": trainer.accelerator.num_processes,
            "weights": weights,
        }
    torch.save(results, f"{out_dir}/rank{torch.distributed.get_rank()}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
