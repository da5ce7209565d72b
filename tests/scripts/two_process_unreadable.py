"""Run by tests/test_trainer_distributed.py under `accelerate launch` with 2 CPU processes.

One image of 16 cannot be decoded. Two steps of 2 x 4 images read the whole set once, so without the cache (and
from a stream) the process that meets the broken image holds 3 captions and the other 4 in that step; with the
cache the image is dropped before batching. Trains map-style and streaming, cached and uncached, and writes, per
rank and case, every reward-model call (captions, retriever pixels, rewards, candidates), the log history, the
weights, and the captions of an evaluation set holding the broken image. With `webdataset` as second argument the
images are read from WebDataset shards (img2dataset's layout) through `load_image_dataset`.
"""

import os
import sys

import datasets
import numpy as np
import torch
from PIL import Image

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever
from discritune_trl.testing.webdataset import write_webdataset_shards
from discritune_trl.utils.data import load_image_dataset


BROKEN_ROW = 5


class RecordingRewardModel(DiscriminativeRewardModel):
    """Keeps the inputs and outputs of every call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def forward(self, captions, pixel_values=None, image_embeds=None, **kwargs):
        output = super().forward(captions, pixel_values=pixel_values, image_embeds=image_embeds, **kwargs)
        images = pixel_values if pixel_values is not None else image_embeds
        self.calls.append(
            {
                "captions": list(captions),
                "images": images.detach().cpu(),
                "cached": pixel_values is None,
                "rewards": output.rewards.detach().cpu(),
                "num_candidates": output.logits.shape[1],
            }
        )
        return output


def make_images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(16)]


def image_dataset() -> datasets.Dataset:
    rows = []
    for index, image in enumerate(make_images()):
        if index == BROKEN_ROW:
            rows.append({"bytes": b"not an image", "path": None})
        else:
            rows.append(image)
    return datasets.Dataset.from_dict({"image": rows}).cast_column("image", datasets.Image())


def main(out_dir: str, source: str = "arrow") -> None:
    if source == "webdataset":  # each process writes its own copy: nothing shared on disk but the output folder
        shards = f"{out_dir}/shards-rank{os.environ['RANK']}"
        write_webdataset_shards(shards, make_images(), images_per_shard=5, broken=[BROKEN_ROW])

        def load(streaming: bool):
            return load_image_dataset(shards, "train", streaming=streaming)
    else:
        dataset = image_dataset()

        def load(streaming: bool):
            return dataset.to_iterable_dataset() if streaming else dataset

    results = {}
    for streaming in (False, True):
        for cache in (False, True):
            args = DiscriTuneConfig(
                output_dir=f"{out_dir}/{'stream' if streaming else 'map'}-{'cached' if cache else 'uncached'}",
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
                cache_embeddings=cache,
            )
            reward_model = RecordingRewardModel(tiny_open_clip_retriever(seed=0))
            train_dataset = load(streaming)
            trainer = DiscriTuneTrainer(
                model=tiny_clipcap_policy(seed=0), reward_model=reward_model, args=args, train_dataset=train_dataset
            )
            trainer.train()
            eval_dataset = load(streaming)
            captions, text_embeds, image_embeds = trainer.caption_dataset(eval_dataset)
            results[(streaming, cache)] = {
                "calls": reward_model.calls,
                "log_history": trainer.state.log_history,
                "baseline": trainer.running_mean.state_dict(),
                "weights": {
                    name: p.detach().cpu()
                    for name, p in trainer.accelerator.unwrap_model(trainer.model).named_parameters()
                },
                "eval_captions": captions,
                "eval_text_embeds": text_embeds.cpu(),
                "eval_image_embeds": image_embeds.cpu(),
            }
    rank = torch.distributed.get_rank()
    torch.save(results, f"{out_dir}/rank{rank}.pt")


if __name__ == "__main__":
    main(*sys.argv[1:])
