"""The one-pass step: caption log-probs taken from the decoding pass (`logprobs_from_generation`) give the two-pass
step's captions, loss and gradients."""

import os
import subprocess
import sys

import pytest
import torch
from test_trainer import first_batch, image_dataset, make_config, make_trainer

from discritune_trl import DiscriminativeRewardModel, DiscriTuneTrainer
from discritune_trl.models.policy import decode_with_log_probs
from discritune_trl.testing.blip import tiny_blip
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever
from discritune_trl.trainer.discritune_trainer import one_pass_obstacles


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dropout_free_policy(seed: int = 0):
    policy = tiny_clipcap_policy(seed=seed)
    for module in policy.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return policy.train()


@pytest.mark.parametrize(
    "generation",
    [
        dict(max_new_tokens=8),
        dict(max_new_tokens=1),
        dict(max_new_tokens=8, do_sample=True, temperature=0.7, top_k=5, top_p=0.9, num_return_sequences=2),
        dict(max_new_tokens=12, do_sample=True, num_return_sequences=3),
    ],
    ids=["greedy", "one_token", "sample_warped", "sample"],
)
def test_decoding_with_log_probs_gives_generate_captions_and_teacher_forced_log_probs(generation):
    policy = dropout_free_policy()
    image_embeds = policy.encode_images(policy.preprocess(image_dataset(6, seed=1)["image"]))
    torch.manual_seed(0)
    expected = policy.generate_captions(image_embeds=image_embeds, **generation)
    torch.manual_seed(0)
    captions = policy(image_embeds=image_embeds, decode=True, **generation)  # through forward, as the trainer
    assert captions.texts == expected.texts
    for name in ("sequences", "caption_mask", "stopped"):
        assert torch.equal(getattr(captions, name), getattr(expected, name)), name
    teacher_forced = policy.caption_log_probs(
        expected.sequences, expected.caption_mask, image_embeds=image_embeds, reduction="none"
    )
    assert captions.token_log_probs.requires_grad
    torch.testing.assert_close(captions.token_log_probs, teacher_forced, rtol=1e-5, atol=1e-5)
    _, teacher_forced_entropies = policy.caption_log_probs(
        expected.sequences, expected.caption_mask, image_embeds=image_embeds, reduction="none", return_entropy=True
    )
    torch.testing.assert_close(captions.token_entropies, teacher_forced_entropies, rtol=1e-5, atol=1e-5)
    if generation["max_new_tokens"] == 12:  # rows that stop early and rows that run to the limit
        assert captions.stopped.any() and not captions.stopped.all()


def test_decoding_stops_when_every_row_has_stopped_and_pads_after_the_stop():
    logits = torch.full((2, 5), -10.0)
    steps = iter([[0, 3], [4, 1], [2, 4], [1, 1]])  # the argmax of each row at each step; 4 is the stop token

    def next_logits(tokens):
        scores = logits.clone()
        scores[torch.arange(2), torch.tensor(next(steps))] = 10.0
        return scores

    generated, token_log_probs = decode_with_log_probs(
        next_logits, max_new_tokens=5, stop_token_ids=[4], pad_token_id=0
    )
    # Row 0 stops at step 2 and is padded after it; row 1 stops at step 3, which ends decoding before step 4.
    assert generated.tolist() == [[0, 4, 0], [3, 1, 4]]
    assert token_log_probs.shape == (2, 3)


def one_step(tmp_path, logprobs_from_generation: str, **overrides):
    trainer = make_trainer(tmp_path / logprobs_from_generation, logprobs_from_generation=logprobs_from_generation,
                           max_steps=1, **overrides)  # fmt: skip
    trainer.model.train()
    batch = first_batch(trainer)
    torch.manual_seed(0)  # the same sampled captions in both steps
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    gradients = {name: p.grad for name, p in trainer.model.named_parameters() if p.requires_grad}
    return trainer, loss.detach(), gradients


@pytest.mark.parametrize(
    "overrides",
    [
        dict(),
        dict(cache_embeddings=False, log_prob_reduction="sum"),
        dict(train_decoding="sample", num_generations=2, baseline="loo", top_k=10),
        dict(train_decoding="sample", baseline="greedy", temperature=0.8),
        dict(beta=0.5, baseline="none"),
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "paper",
)
def test_one_pass_step_gives_the_two_pass_loss_and_every_gradient(tmp_path, overrides):
    two_pass, loss, gradients = one_step(tmp_path, "false", **overrides)
    one_pass, one_pass_loss, one_pass_gradients = one_step(tmp_path, "true", **overrides)
    assert one_pass._one_pass and not two_pass._one_pass
    assert one_pass._metrics["completions/mean_length"] == two_pass._metrics["completions/mean_length"]
    # `entropy` from the logits either step already has: the decoding pass's equal the log-prob pass's.
    assert one_pass._metrics["entropy"] == pytest.approx(two_pass._metrics["entropy"], rel=1e-5)
    torch.testing.assert_close(one_pass_loss, loss, rtol=1e-5, atol=1e-6)
    assert one_pass_gradients.keys() == gradients.keys()
    for name, gradient in gradients.items():
        assert gradient is not None and one_pass_gradients[name] is not None, name
        torch.testing.assert_close(one_pass_gradients[name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    assert any(gradient.abs().sum() > 0 for gradient in gradients.values())


def test_one_pass_trains_under_bf16_autocast(tmp_path):
    trainer = make_trainer(tmp_path, logprobs_from_generation="true", bf16=True, max_steps=2)
    weights = trainer.model.language_model.lm_head.weight.detach().clone()
    trainer.train()
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)
    assert not torch.equal(weights, trainer.model.language_model.lm_head.weight)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(disable_dropout=False), "dropout is active"),
        (dict(gradient_checkpointing=True), "gradient checkpointing"),
    ],
)
def test_one_pass_that_cannot_apply_fails_at_construction_and_auto_falls_back(tmp_path, overrides, message):
    def trainer(setting: str) -> DiscriTuneTrainer:
        policy = tiny_clipcap_policy(seed=0)
        policy.language_model.transformer.drop.p = 0.1  # the tiny GPT-2 has no dropout of its own
        return DiscriTuneTrainer(
            model=policy,
            reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
            args=make_config(tmp_path / setting, logprobs_from_generation=setting, **overrides),
            train_dataset=image_dataset(8),
        )

    with pytest.raises(ValueError, match=message):
        trainer("true")
    assert not trainer("auto")._one_pass


def test_beam_training_refuses_the_one_pass_step_and_bools_are_accepted(tmp_path):
    with pytest.raises(ValueError, match="train_decoding='beam'"):
        make_config(tmp_path, logprobs_from_generation="true", train_decoding="beam")
    assert make_config(tmp_path, logprobs_from_generation=True).logprobs_from_generation == "true"
    assert make_config(tmp_path, logprobs_from_generation=False).logprobs_from_generation == "false"
    with pytest.raises(ValueError, match="logprobs_from_generation='maybe'"):
        make_config(tmp_path, logprobs_from_generation="maybe")


def test_a_policy_without_generate_with_log_probs_keeps_the_two_pass_step(tmp_path):
    from discritune_trl import BlipPolicy

    model, processor = tiny_blip(seed=0)
    policy = BlipPolicy.from_blip(model, processor)
    assert not policy.supports_log_probs_from_generation
    assert "does not implement generate_with_log_probs" in " ".join(one_pass_obstacles(policy, make_config(tmp_path)))
    with pytest.raises(NotImplementedError, match="logprobs_from_generation='false'"):
        policy(pixel_values=policy.preprocess(image_dataset(2)["image"]), decode=True)


@pytest.mark.distributed
def test_two_processes_one_pass_and_two_pass_give_the_same_synchronised_gradients(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "cpu_2proc.yaml"),
        "--main_process_port", "0",
        os.path.join(ROOT, "tests", "scripts", "two_process_one_pass.py"), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    for rank in ranks:
        assert rank["num_processes"] == 2 and rank["true"]["one_pass"] and not rank["false"]["one_pass"]
        assert rank["true"]["loss"] == pytest.approx(rank["false"]["loss"], rel=1e-5, abs=1e-6)
        for name, gradient in rank["false"]["gradients"].items():
            torch.testing.assert_close(rank["true"]["gradients"][name], gradient, rtol=1e-4, atol=1e-6, msg=name)
    # DDP averaged the gradients of the two processes' different images: both hold the same ones, in both steps.
    for mode in ("true", "false"):
        for name, gradient in ranks[0][mode]["gradients"].items():
            assert torch.equal(gradient, ranks[1][mode]["gradients"][name]), (mode, name)
    assert ranks[0]["false"]["captions"] != ranks[1]["false"]["captions"]  # the processes saw different images
