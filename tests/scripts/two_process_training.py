"""Run by tests/test_trainer_distributed.py under `accelerate launch` with 2 CPU processes.

Trains the tiny policy for two steps, from a map-style and from a streaming dataset, and writes, per rank, what the
test compares: the first step's captions, retriever pixels, rewards and candidate count, the log history, the final
weights and the captions of the whole dataset.
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
    """Keeps the inputs and outputs of the first call."""

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


def main(out_dir: str) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(16)]
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    args = DiscriTuneConfig(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        max_completion_length=6,
        eval_num_beams=2,
        per_device_eval_batch_size=3,
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
    captions, _, image_embeds = trainer.caption_dataset(dataset)  # 6 uneven batches of 3, split over 2 processes
    rank = trainer.accelerator.process_index

    # The same from a streaming dataset: each process reads its own share of the stream.
    stream_reward_model = RecordingRewardModel(tiny_open_clip_retriever(seed=0))
    stream_trainer = DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=stream_reward_model,
        args=args,
        train_dataset=dataset.to_iterable_dataset(),
    )
    stream_trainer.train()
    stream_captions, _, _ = stream_trainer.caption_dataset(dataset.to_iterable_dataset())
    torch.save(
        {
            "stream": {
                "first_call": stream_reward_model.first_call,
                "captions": stream_captions,
                "weights": {
                    name: p.detach().cpu()
                    for name, p in stream_trainer.accelerator.unwrap_model(stream_trainer.model).named_parameters()
                },
            },
            "num_processes": trainer.accelerator.num_processes,
            "first_call": reward_model.first_call,
            "log_history": trainer.state.log_history,
            "baseline": trainer.running_mean.state_dict(),
            "captions": captions,
            "image_embeds": image_embeds.cpu(),
            "weights": {
                name: p.detach().cpu()
                for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
            },
        },
        f"{out_dir}/rank{rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1])
