"""`benchmarks/throughput.py --tiny` runs in seconds and writes every figure (values not asserted: timings)."""

import importlib.util
import json
import os

import pytest


BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "throughput.py")


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_benchmark_writes_every_figure(throughput, tmp_path):
    path = tmp_path / "figures.json"
    argv = ["--tiny", "--batch_size", "4", "--steps", "1", "--warmup_steps", "1", "--max_new_tokens", "4"]
    argv += ["--peak_tflops", "2.0"]
    throughput.main([*argv, "--precision", "fp32", "bf16", "--in_process", "--json", str(path)])
    figures = json.loads(path.read_text())
    assert {"device", "device_type", "batch_size", "command", "cache", "reference", "discritune"} <= set(figures)
    assert figures["batch_size"] == 4 and figures["device_type"] == "cpu"
    assert set(figures["discritune"]) == set(figures["one_pass"]) == {"fp32", "bf16"}
    for loop in (figures["reference"], *figures["discritune"].values(), *figures["one_pass"].values()):
        assert {
            "images_per_second",
            "step_seconds",
            "phase_seconds",
            "phase_images_per_second",
            "peak_memory_mib",
            "cpu_seconds_per_step",
            "images_per_cpu_second",
        } <= set(loop)
        assert loop["images_per_cpu_second"] == pytest.approx(4 / loop["cpu_seconds_per_step"])
        assert set(loop["phase_images_per_second"]) == set(throughput.PHASES)
        assert loop["images_per_second"] > 0 and loop["peak_memory_mib"] > 0
        assert loop["model_flops_per_image"]["total"] > 0 and loop["peak_tflops"] == 2.0
        assert loop["utilisation"] == pytest.approx(loop["achieved_tflops"] / 2.0)
    assert figures["discritune"]["fp32"]["speedup_vs_reference"] > 0
    assert figures["discritune"]["fp32"]["cpu_speedup_vs_reference"] > 0
    # The one-pass step has no teacher-forced forward; the reference re-encodes images, the others read the cache.
    one_pass, two_pass = figures["one_pass"]["fp32"]["model_flops_per_image"], figures["discritune"]["fp32"]
    assert one_pass["log_prob_forward"] == 0 and one_pass["total"] < two_pass["model_flops_per_image"]["total"]
    assert "image_encoding" in figures["reference"]["model_flops_per_image"]


def test_batch_sweep_reports_each_batch_size(throughput, tmp_path):
    path = tmp_path / "sweep.json"
    argv = ["--tiny", "--batch_size", "2", "3", "--steps", "1", "--warmup_steps", "1", "--max_new_tokens", "2"]
    throughput.main([*argv, "--loops", "one_pass", "--precision", "fp32", "--in_process", "--json", str(path)])
    figures = json.loads(path.read_text())
    assert figures["batch_sizes"] == [2, 3] and set(figures["sweep"]) == {"2", "3"}
    for size, run in figures["sweep"].items():
        assert run["batch_size"] == int(size) and set(run) >= {"one_pass"} and "reference" not in run


def test_model_flops_match_a_flop_counter_on_the_tiny_models(throughput):
    """The analytic FLOPs of GPT-2's teacher-forced forward count what torch runs, within a few percent (the
    counter leaves out the fused attention kernel, which the formula counts)."""
    import argparse

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    policy, reward_model = throughput.build_models(tiny=True)
    args = argparse.Namespace(max_new_tokens=6)
    flops = throughput.model_flops_per_image(policy, reward_model, args, "two_pass")
    image_embeds = torch.randn(3, policy.config.clip_embed_dim)
    caption_ids = torch.randint(len(policy.tokenizer), (3, 6))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        policy.caption_log_probs(caption_ids, torch.ones_like(caption_ids), image_embeds=image_embeds)
    assert counter.get_total_flops() / 3 == pytest.approx(flops["log_prob_forward"], rel=0.05)


def test_reference_stopping_forces_eos_after_a_full_stop(throughput):
    import torch

    processor = throughput.RowByRowStopProcessor(stop_token_ids=[5], eos_token_id=0)
    scores = processor(torch.tensor([[3, 5], [5, 2]]), torch.zeros(2, 6))
    assert scores[0].argmax() == 0 and torch.isinf(scores[0, 1:]).all()
    assert torch.equal(scores[1], torch.zeros(6))


def test_log_prob_memory_mode_reports_before_and_after(throughput, tmp_path):
    path = tmp_path / "memory.json"
    argv = ["--log_prob_memory", "--tiny", "--batch_size", "4", "--max_new_tokens", "3", "--precision", "fp32", "bf16"]
    throughput.main([*argv, "--json", str(path)])
    figures = json.loads(path.read_text())["log_prob_memory_mib"]
    assert figures["logits_shape"][:2] == [4, 3]
    for precision in ("fp32", "bf16"):
        assert set(figures[precision]) == {"before", "after"}
        assert all(value >= 0 for value in figures[precision].values())
