"""Run by tests/test_fsdp2.py under `accelerate launch` with 2 CPU processes (gloo).

Accelerate does not apply FSDP on a CPU (docs/distributed.md), so the script shards the trainer's policy itself, in
place, as Accelerate's FSDP2 preparation does (`fully_shard` on each GPT-2 block, then on the whole policy, with
`reshard_after_forward=True` as in `examples/accelerate_configs/fsdp.yaml`), after computing everything once on the
unsharded policy. It writes, per rank, what the test compares: the step's loss, captions and gradients (two-pass and
one-pass, greedy baseline), evaluation's metrics and captions, and the log-probs of a forward from pixels, unsharded
and sharded; the error of a generation on the sharded policy before `register_fsdp_forward_methods`; what the
registration returned, and its error for a method the policy does not have.
"""

import sys

import datasets
import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.models.policy import register_fsdp_forward_methods
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a sharded `DTensor`: every process calls it in the same order)."""
    return (tensor.full_tensor() if isinstance(tensor, DTensor) else tensor).detach().clone()


def step(trainer: DiscriTuneTrainer, batch, one_pass: bool) -> dict:
    """One `compute_loss` + backward on the trainer's model, and the gradients the optimizer would see (averaged
    over the processes: FSDP2's reduce-scatter for the sharded policy, an all-reduce here for the unsharded one)."""
    model = trainer.model
    trainer._one_pass = one_pass
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1 + dist.get_rank())  # the same samples, unsharded and sharded
    loss, captions = trainer.compute_loss(model, batch, return_outputs=True)
    loss.backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is None:
            continue
        gradient = full(parameter.grad)
        if not isinstance(parameter.grad, DTensor):
            dist.all_reduce(gradient)
            gradient /= dist.get_world_size()
        gradients[name] = gradient
    model.zero_grad(set_to_none=True)
    return {"loss": loss.item(), "captions": list(captions.texts), "gradients": gradients}


def everything(trainer: DiscriTuneTrainer, batch, eval_dataset, pixels: torch.Tensor) -> dict:
    """What the trainer computes with its model: the step (two-pass and one-pass), evaluation, a forward from pixels
    (the policy's frozen encoder runs inside `forward`)."""
    record = {"two_pass": step(trainer, batch, one_pass=False), "one_pass": step(trainer, batch, one_pass=True)}
    record["eval_metrics"] = trainer.evaluate(eval_dataset)
    record["eval_captions"] = trainer.caption_dataset(eval_dataset)[0]
    captions = trainer.model.generate_captions(pixel_values=pixels, max_new_tokens=6)
    with torch.no_grad():
        record["forward_log_probs"] = trainer.model(
            pixel_values=pixels,
            caption_ids=captions.sequences,
            caption_mask=captions.caption_mask,
            log_prob_reduction="none",
        )
    return record


def main(out_dir: str) -> None:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(14)]
    train = datasets.Dataset.from_dict({"image": images[:8]}).cast_column("image", datasets.Image())
    evaluation = datasets.Dataset.from_dict({"image": images[8:]}).cast_column("image", datasets.Image())
    args = DiscriTuneConfig(
        output_dir=out_dir,
        per_device_train_batch_size=4,
        pool_size=4,
        train_decoding="sample",
        baseline="greedy",  # the greedy baseline captions through generate_captions too
        max_completion_length=6,
        eval_num_beams=2,
        eval_num_candidates=6,
        per_device_eval_batch_size=2,
        cache_embeddings=False,  # evaluation captions from pixels: generate_captions calls encode_images inside
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    trainer = DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=args,
        train_dataset=train,
    )
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))  # this process's 4 images
    pixels = batch.policy_pixel_values
    record = {
        "num_processes": trainer.accelerator.num_processes,
        "unsharded": everything(trainer, batch, evaluation, pixels),
    }

    policy = trainer.model
    for block in policy.language_model.transformer.h:
        fully_shard(block, reshard_after_forward=True)
    fully_shard(policy, reshard_after_forward=True)  # in place: trainer.model is the sharded policy now
    assert trainer.model is policy and trainer.accelerator.unwrap_model(policy) is policy
    record["sharded_parameters"] = sorted(name for name, p in policy.named_parameters() if isinstance(p, DTensor))
    try:  # what the trainer met before it registered the methods
        policy.generate_captions(image_embeds=policy.encode_images(pixels), max_new_tokens=6)
        record["unregistered_error"] = None
    except RuntimeError as error:
        record["unregistered_error"] = str(error)

    record["sharded"] = everything(trainer, batch, evaluation, pixels)  # the trainer registers the methods
    record["registered"] = [register_fsdp_forward_methods(policy), register_fsdp_forward_methods(policy)]
    record["still_sharded"] = sorted(name for name, p in policy.named_parameters() if isinstance(p, DTensor))
    other = tiny_clipcap_policy(seed=0)
    other.fsdp_forward_methods = ("generate_captions", "caption_everything")
    try:
        register_fsdp_forward_methods(fully_shard(other))
        record["missing_method_error"] = None
    except ValueError as error:
        record["missing_method_error"] = str(error)
    torch.save(record, f"{out_dir}/rank{trainer.accelerator.process_index}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
