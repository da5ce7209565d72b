"""torch's FSDP2 (`fully_shard`) over gloo on 2 CPU processes: the trainer's calls outside `forward` (the frozen
encoder, generation, the greedy baseline, evaluation) see gathered parameters, and give what the unsharded policy
gives."""

import os
import subprocess
import sys

import pytest
import torch

from discritune_trl.models.policy import register_fsdp_forward_methods
from discritune_trl.testing.clipcap import tiny_clipcap_policy


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.distributed
def test_fsdp2_sharded_policy_steps_and_evaluates_as_the_unsharded_one(tmp_path):
    """Issue 15: under FSDP2 `generate_captions` and `encode_images`, which the trainer calls on the model outside
    `forward`, read sharded `DTensor` parameters and failed ("got mixed torch.Tensor and DTensor"); the trainer now
    registers them as forward methods. The step's loss, captions and averaged gradients (two-pass and one-pass,
    sampled captions against a greedy baseline), evaluation and a forward from pixels are those of the unsharded
    policy, bit for bit, on each process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "cpu_2proc.yaml"),
        "--main_process_port", "0",
        os.path.join(ROOT, "tests", "scripts", "two_process_fsdp2.py"), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert all(rank["num_processes"] == 2 for rank in ranks)
    captions = [rank["unsharded"]["two_pass"]["captions"] for rank in ranks]
    assert captions[0] != captions[1]  # each process stepped on its own images

    for rank in ranks:
        # The policy was sharded (every GPT-2 block and the mapper hold DTensors), and generation failed on it
        # before the registration, as it did in the trainer before this fix.
        sharded = rank["sharded_parameters"]
        assert any(name.startswith("mapper.") for name in sharded)
        assert any(name.startswith("language_model.transformer.h.") for name in sharded)
        assert "got mixed torch.Tensor and DTensor" in rank["unregistered_error"]
        # Registered once: a second call returns the same names; the parameters are sharded again after every call.
        assert rank["registered"] == [("encode_images", "generate_captions")] * 2
        assert rank["still_sharded"] == sharded
        # A policy that lists a method it does not have is refused with the name.
        assert "fsdp_forward_methods names ['caption_everything']" in rank["missing_method_error"]

        unsharded, fsdp = rank["unsharded"], rank["sharded"]
        for kind in ("two_pass", "one_pass"):
            assert fsdp[kind]["captions"] == unsharded[kind]["captions"]
            assert fsdp[kind]["loss"] == unsharded[kind]["loss"]
            gradients = unsharded[kind]["gradients"]
            assert set(fsdp[kind]["gradients"]) == set(gradients)
            assert any(name.startswith("mapper.") and gradient.abs().sum() > 0 for name, gradient in gradients.items())
            for name, gradient in gradients.items():
                torch.testing.assert_close(fsdp[kind]["gradients"][name], gradient, rtol=1e-6, atol=1e-7)
        assert without_speed(fsdp["eval_metrics"]) == without_speed(unsharded["eval_metrics"])
        assert fsdp["eval_captions"] == unsharded["eval_captions"]  # beam search from pixels: encode_images nested
        assert torch.equal(fsdp["forward_log_probs"], unsharded["forward_log_probs"])  # encode_images in forward


def without_speed(metrics: dict) -> dict:
    """Evaluation metrics without Trainer's timing figures (eval_runtime, ..._per_second), which differ run to run."""
    return {key: value for key, value in metrics.items() if not key.endswith(SPEED_METRICS)}


SPEED_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second")


def test_registration_leaves_an_unsharded_policy_unchanged():
    """Without FSDP2 (DDP, one process) nothing is registered and the policy's methods stay its own."""
    policy = tiny_clipcap_policy(seed=0)
    method = policy.generate_captions
    assert register_fsdp_forward_methods(policy) == ()
    assert policy.generate_captions == method and "generate_captions" not in policy.__dict__
