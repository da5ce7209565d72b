"""Two CPU processes under `accelerate launch`: global-batch rewards, one baseline, weights kept in sync."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import DiscriminativeRewardModel
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_pools(ranks: list[dict], per_device: int, pool_size: int) -> None:
    """With pools of `per_device` images each process's rewards are exactly those of one process alone with its own
    images; with `pool_size=-1` they are one process's over all images of both."""
    single = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    calls = [rank[pool_size]["first_call"] for rank in ranks]
    log = next(entry for entry in ranks[0][pool_size]["log_history"] if "pool/size" in entry)
    if pool_size == per_device:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as each launched process: the same kernels, so the same bits
        try:
            for call in calls:
                assert call["num_candidates"] == per_device and len(call["captions"]) == per_device
                expected = single(call["captions"], pixel_values=call["pixel_values"]).rewards
                assert torch.equal(call["rewards"], expected)
        finally:
            torch.set_num_threads(threads)
        assert log["pool/size"] == per_device and log["pool/count"] == 2
    else:
        assert all(call["num_candidates"] == 2 * per_device for call in calls)
        expected = single(
            calls[0]["captions"] + calls[1]["captions"],
            pixel_values=torch.cat([calls[0]["pixel_values"], calls[1]["pixel_values"]]),
        ).rewards
        torch.testing.assert_close(torch.cat([call["rewards"] for call in calls]), expected, rtol=1e-5, atol=1e-5)
        assert log["pool/size"] == 2 * per_device and log["pool/count"] == 1
    for name, weight in ranks[0][pool_size]["weights"].items():  # one update, the same on both processes
        assert torch.equal(weight, ranks[1][pool_size]["weights"][name]), name


@pytest.mark.distributed
def test_two_process_training_uses_the_global_batch(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "cpu_2proc.yaml"),
        "--main_process_port", "0",
        os.path.join(ROOT, "tests", "scripts", "two_process_training.py"), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert all(rank["num_processes"] == 2 for rank in ranks)

    # Every caption was scored against the 8 images of the global batch, not the 4 of its process...
    assert all(rank["first_call"]["num_candidates"] == 8 for rank in ranks)
    # ...and its reward equals one process scoring the same 8 captions against the same 8 images.
    single = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    captions = ranks[0]["first_call"]["captions"] + ranks[1]["first_call"]["captions"]
    pixels = torch.cat([ranks[0]["first_call"]["pixel_values"], ranks[1]["first_call"]["pixel_values"]])
    expected = single(captions, pixel_values=pixels).rewards
    got = torch.cat([ranks[0]["first_call"]["rewards"], ranks[1]["first_call"]["rewards"]])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

    # The logged reward is the global mean, and both processes hold the same baseline and the same weights.
    first_log = next(entry for entry in ranks[0]["log_history"] if "reward" in entry)
    assert first_log["reward"] == pytest.approx(expected.mean().item(), abs=1e-5)
    assert ranks[0]["baseline"] == ranks[1]["baseline"]
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name

    # caption_dataset returns every image once, in dataset order, whatever process captioned it.
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(16)]
    policy = tiny_clipcap_policy(seed=0)
    policy.load_state_dict(ranks[0]["weights"], strict=False)
    expected_captions = policy.generate_captions(
        pixel_values=policy.preprocess(images), num_beams=2, max_new_tokens=6
    ).texts
    assert ranks[0]["captions"] == ranks[1]["captions"] == expected_captions
    expected_embeds = single.encode_images(single.preprocess(images))
    torch.testing.assert_close(ranks[0]["image_embeds"], expected_embeds, rtol=1e-5, atol=1e-5)

    # From a streaming dataset, the first global batch is the stream's first 8 images, 4 per process, each caption
    # scored against all 8; the weights stay in sync and caption_dataset still returns every image once, in order.
    streams = [rank["stream"] for rank in ranks]
    assert all(stream["first_call"]["num_candidates"] == 8 for stream in streams)
    stream_pixels = torch.cat([stream["first_call"]["pixel_values"] for stream in streams])
    torch.testing.assert_close(stream_pixels, single.preprocess(images[:8]))
    for name, weight in streams[0]["weights"].items():
        assert torch.equal(weight, streams[1]["weights"][name]), name
    policy.load_state_dict(streams[0]["weights"], strict=False)
    expected_stream_captions = policy.generate_captions(
        pixel_values=policy.preprocess(images), num_beams=2, max_new_tokens=6
    ).texts
    assert streams[0]["captions"] == streams[1]["captions"] == expected_stream_captions


@pytest.mark.distributed
@pytest.mark.parametrize("source", ["arrow", "webdataset"])
def test_two_processes_with_an_unreadable_image_on_one_rank_train_and_evaluate(tmp_path, source):
    """Issue 13: one process holding fewer captions than the other (an image it could not decode) used to abort the
    job in the rewards' cross-process gather; now every gather handles unequal sizes, cached and uncached, map-style
    and streaming, and the logged reward is the mean over the 7 captions of both processes. The same from WebDataset
    shards (issue 15) with a broken member."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "cpu_2proc.yaml"),
        "--main_process_port", "0",
        os.path.join(ROOT, "tests", "scripts", "two_process_unreadable.py"), str(tmp_path), source,
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    single = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0))
    for streaming, cache in [(False, False), (False, True), (True, False), (True, True)]:
        case = [rank[(streaming, cache)] for rank in ranks]
        calls = [rank["calls"] for rank in case]
        assert len(calls[0]) == len(calls[1]) == 2
        sizes = [[len(call["captions"]) for call in rank_calls] for rank_calls in calls]
        uneven = [step for step in range(2) if sizes[0][step] != sizes[1][step]]
        if cache and not streaming:  # dropped while caching: every batch is full
            assert sizes == [[4, 4], [4, 4]]
            assert all(call["cached"] for rank_calls in calls for call in rank_calls)
        else:  # the broken image was met in one step, by one process
            assert len(uneven) == 1 and sorted([sizes[0][uneven[0]], sizes[1][uneven[0]]]) == [3, 4], sizes
        for step in range(2):
            step_calls = [rank_calls[step] for rank_calls in calls]
            captions = step_calls[0]["captions"] + step_calls[1]["captions"]
            images = torch.cat([call["images"] for call in step_calls])
            inputs = {"image_embeds" if step_calls[0]["cached"] else "pixel_values": images}
            expected = single(captions, **inputs).rewards  # one process scoring every caption of the step
            got = torch.cat([call["rewards"] for call in step_calls])
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
            assert all(call["num_candidates"] == len(captions) for call in step_calls)
            logged = [entry for entry in case[0]["log_history"] if "reward" in entry][step]
            assert logged["reward"] == pytest.approx(expected.mean().item(), abs=1e-5)
        # The skipped image is counted once, whichever process met it, and the processes stayed in sync.
        last_log = [entry for entry in case[0]["log_history"] if "data/unreadable_images" in entry][-1]
        assert last_log["data/unreadable_images"] == 1.0
        assert case[0]["baseline"] == case[1]["baseline"]
        for name, weight in case[0]["weights"].items():
            assert torch.equal(weight, case[1]["weights"][name]), name
        # Evaluation captions the 15 readable images once each, on both processes alike.
        assert len(case[0]["eval_captions"]) == 15 and case[0]["eval_captions"] == case[1]["eval_captions"]
        assert case[0]["eval_image_embeds"].shape[0] == 15
        torch.testing.assert_close(case[0]["eval_text_embeds"], case[1]["eval_text_embeds"])


@pytest.mark.distributed
def test_two_processes_with_pools_of_100_reward_each_rank_like_one_process_with_its_own_100_images(tmp_path):
    """Issue 15: with pools, adding a process adds pools, not distractors; pool_size=-1 keeps the global batch."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", os.path.join(ROOT, "examples", "accelerate_configs", "cpu_2proc.yaml"),
        "--main_process_port", "0",
        os.path.join(ROOT, "tests", "scripts", "two_process_pools.py"), str(tmp_path),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    check_pools(ranks, per_device=100, pool_size=100)  # each process alone with its own 100 images
    check_pools(ranks, per_device=100, pool_size=-1)  # as before pools existed: all 200 images for every caption


@pytest.mark.distributed
def test_two_machines_of_one_process_each_train_with_pools_as_documented(tmp_path):
    """Issue 15: `--num_machines 2 --machine_rank 0/1` on localhost, one CPU process per "machine", as
    examples/slurm/discritune_2x8.sbatch launches real machines."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    machines = []
    for machine_rank in range(2):
        command = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(machine_rank),
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "static",
            "--mixed_precision", "no", "--dynamo_backend", "no",
            os.path.join(ROOT, "tests", "scripts", "two_process_pools.py"), str(tmp_path), "8", "8,-1",
        ]  # fmt: skip
        machines.append(
            subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        )
    outputs = [machine.communicate(timeout=600)[0] for machine in machines]
    assert [machine.returncode for machine in machines] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    ranks = [torch.load(tmp_path / f"rank{rank}.pt", weights_only=False) for rank in range(2)]
    assert all(rank[8]["num_processes"] == 2 for rank in ranks)
    check_pools(ranks, per_device=8, pool_size=8)  # one pool per machine: nothing crosses machines
    check_pools(ranks, per_device=8, pool_size=-1)  # the global pool spans both machines
