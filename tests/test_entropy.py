"""The `entropy` metric: the policy's mean per-token entropy over the step's captions, from logits a pass of the step
already computed (tests/test_one_pass.py: the decoding pass gives the same values as the log-prob pass)."""

import math

import pytest
import torch
from test_trainer import first_batch, make_trainer

from discritune_trl.models import token_entropies
from discritune_trl.testing.blip import random_images
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.vlm import tiny_vlm


def test_token_entropies_match_the_definition_and_ignore_suppressed_tokens():
    logits = torch.randn(11, 3, 7, dtype=torch.float64)  # more rows than a chunk
    probs = logits.softmax(dim=-1)
    expected = -(probs * probs.log()).sum(dim=-1)
    torch.testing.assert_close(token_entropies(logits, chunk_rows=4), expected.float())
    uniform = torch.zeros(1, 1, 8)
    assert token_entropies(uniform).item() == pytest.approx(math.log(8))
    uniform[..., 4:] = float("-inf")  # suppressed: the distribution is uniform over 4
    assert token_entropies(uniform).item() == pytest.approx(math.log(4))


def test_caption_log_probs_return_the_entropies_of_their_own_logits():
    policy = tiny_clipcap_policy(seed=0).eval()
    pixels = policy.preprocess(random_images(3))
    captions = policy.generate_captions(pixel_values=pixels, max_new_tokens=6)
    log_probs, entropies = policy.caption_log_probs(
        captions.sequences, captions.caption_mask, pixels, reduction="mean", return_entropy=True
    )
    assert torch.equal(log_probs, policy.caption_log_probs(captions.sequences, captions.caption_mask, pixels))
    logits = policy.caption_logits(policy.image_conditioning(pixels, None), captions.sequences, captions.caption_mask)
    expected = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1) * captions.caption_mask
    torch.testing.assert_close(entropies, expected.detach())
    assert not entropies.requires_grad


def test_a_vlm_with_suppressed_tokens_gives_finite_entropies():
    from discritune_trl.models import VLMPolicy

    policy = VLMPolicy.from_vlm(*tiny_vlm("idefics3")).eval()
    pixels = policy.preprocess(random_images(2))
    captions = policy.generate_captions(pixel_values=pixels, max_new_tokens=4)
    _, entropies = policy.caption_log_probs(
        captions.sequences, captions.caption_mask, pixels, reduction="none", return_entropy=True
    )
    assert torch.isfinite(entropies).all() and (entropies[captions.caption_mask.bool()] > 0).all()


def test_the_trainer_logs_the_mean_entropy_over_caption_tokens(tmp_path):
    trainer = make_trainer(tmp_path, logprobs_from_generation="false", max_steps=2)
    batch = first_batch(trainer)
    policy = trainer.model
    captions = policy.generate_captions(**batch.policy_inputs, max_new_tokens=6)
    _, entropies = policy.caption_log_probs(
        captions.sequences, captions.caption_mask, **batch.policy_inputs, return_entropy=True
    )
    trainer.compute_loss(trainer.model, batch)
    expected = entropies.sum() / captions.caption_mask.sum()
    assert trainer._metrics["entropy"] == [pytest.approx(expected.item(), rel=1e-5)]
    trainer.train()
    logged = [entry["entropy"] for entry in trainer.state.log_history if "entropy" in entry]
    assert len(logged) == 2 and all(value > 0 for value in logged)
