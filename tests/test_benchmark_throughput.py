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
    throughput.main([*argv, "--precision", "fp32", "bf16", "--in_process", "--json", str(path)])
    figures = json.loads(path.read_text())
    assert {"device", "device_type", "batch_size", "command", "cache", "reference", "discritune"} <= set(figures)
    assert figures["batch_size"] == 4 and figures["device_type"] == "cpu"
    assert set(figures["discritune"]) == {"fp32", "bf16"}
    for loop in (figures["reference"], *figures["discritune"].values()):
        assert {
            "images_per_second",
            "step_seconds",
            "phase_seconds",
            "phase_images_per_second",
            "peak_memory_mib",
        } <= set(loop)
        assert set(loop["phase_images_per_second"]) == set(throughput.PHASES)
        assert loop["images_per_second"] > 0 and loop["peak_memory_mib"] > 0
    assert figures["discritune"]["fp32"]["speedup_vs_reference"] > 0


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
