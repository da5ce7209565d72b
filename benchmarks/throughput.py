"""Training-step throughput of `DiscriTuneTrainer` against a reference loop that follows the paper's public code.

Both loops train the same ClipCap (CLIP ViT-B/32 encoder -> MLP mapper -> GPT-2 124M, the paper's models) against
the same CLIP ViT-B/32 retriever, at the same batch size, on the same machine, in one run. Weights are random and
built from configs (no download); captions always run to `--max_new_tokens` because a random GPT-2 rarely emits a
full stop, which is the slowest case for both loops.

- **discritune**: `DiscriTuneTrainer.train()` with the frozen-embedding cache (computed once before the timed
  steps, its cost reported apart), greedy decoding through `generate` with batched stopping, the retriever's text
  batch trimmed to the longest caption, and the policy under the precision asked (`--precision`; the reward always
  runs in fp32).
- **reference**: the step of the paper's public implementation (EGG, `egg/zoo/discriminative_captioner`), written
  here from its description: both CLIP image towers re-run on the pixels at every step, the mapper, `generate` with
  a logits processor that loops over rows in Python to force EOS after a full stop, a second teacher-forced GPT-2
  pass over all positions, CLIP text padded to 77 tokens, fp32 throughout, Adam. Pixels are prepared once outside
  the timed region (the reference does that in data-loader workers), which favours the reference.

Usage:
    python benchmarks/throughput.py                       # full size, batch 16, fp32 and bf16, on CPU
    python benchmarks/throughput.py --tiny --steps 1 --warmup_steps 1 --json figures.json
    python benchmarks/throughput.py --device cuda --batch_size 100 --precision bf16 fp16
    python benchmarks/throughput.py --log_prob_memory --batch_size 100 --precision fp32 bf16   # the log-prob pass only

`--log_prob_memory` measures only the token log-prob pass (forward and backward from `[B, max_new_tokens, V]`
logits, V = GPT-2's 50,257 or the tiny vocabulary with `--tiny`): its peak memory above the logits themselves, with
the full-vocabulary fp32 formula the trainer used before (`logits.float()` gather minus log-sum-exp) and with
`gather_token_log_probs` (row chunks), in each `--precision`.

Phases (images/second each; the step figure is what matters): `image_encoding` (reading cached embeddings, or
running both CLIP towers), `generation` (mapper + decoding + detokenisation), `reward` (retriever text encoding and
scores), `logprob_backward` (the teacher-forced pass, backward, optimizer step and the rest of the step).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict

import datasets
import numpy as np
import open_clip
import torch
from PIL import Image
from transformers import LogitsProcessor, LogitsProcessorList, TrainerCallback


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from discritune_trl import (  # noqa: E402
    ClipCapConfig,
    ClipCapPolicy,
    DiscriminativeRewardModel,
    DiscriTuneConfig,
    DiscriTuneTrainer,
    OpenCLIPRetriever,
    cache_frozen_embeddings,
)
from discritune_trl.models.policy import gather_token_log_probs  # noqa: E402
from discritune_trl.testing.clipcap import TINY_WORDS, tiny_clipcap_policy, tiny_clipcap_tokenizer  # noqa: E402
from discritune_trl.testing.retrievers import tiny_open_clip_config, tiny_open_clip_retriever  # noqa: E402


PHASES = ("image_encoding", "generation", "reward", "logprob_backward")
GPT2_VOCAB_SIZE = 50257
PRECISIONS = ("fp32", "bf16", "fp16")
LOOPS = ("reference", "two_pass", "one_pass", "two_pass_static")
# Dense peak FLOP/s (no sparsity) of known GPUs, per precision: NVIDIA's H100 SXM / H200 datasheets (fp32 without
# TF32, which torch leaves off for matmuls by default). Other devices: pass --peak_tflops.
KNOWN_PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "fp32": 67.0},
}


# ---------------------------------------------------------------------------------------------------- models


def build_models(tiny: bool, seed: int = 0) -> tuple[ClipCapPolicy, DiscriminativeRewardModel]:
    """The policy and the reward model; the policy's encoder gets the retriever's image-tower weights (the paper
    uses one CLIP ViT-B/32 for both)."""
    torch.manual_seed(seed)
    if tiny:
        retriever = tiny_open_clip_retriever(seed=seed)
        policy = tiny_clipcap_policy(seed=seed, clip_model_cfg=tiny_open_clip_config())
    else:
        retriever = OpenCLIPRetriever(None, model_cfg=open_clip.get_model_config("ViT-B-32"))
        # A word-level tokenizer with GPT-2's vocabulary size: GPT-2's own needs a download.
        filler = [f"w{index}" for index in range(GPT2_VOCAB_SIZE)]
        words = list(dict.fromkeys([*TINY_WORDS, *filler]))[: GPT2_VOCAB_SIZE - 3]
        tokenizer = tiny_clipcap_tokenizer(words)
        config = ClipCapConfig(clip_model_name="ViT-B-32", mapper_type="mlp", prefix_length=10)
        config.text_config.eos_token_id = config.text_config.bos_token_id = tokenizer.eos_token_id
        policy = ClipCapPolicy(config, tokenizer=tokenizer)
    policy.visual.load_state_dict(retriever.model.visual.state_dict())
    for module in policy.modules():  # both loops run without dropout (DiscriTuneConfig.disable_dropout)
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return policy, DiscriminativeRewardModel(retriever)


def random_images(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


# ---------------------------------------------------------------------------------------------------- model FLOPs


def transformer_flops(blocks: torch.nn.Module, layers: int, width: int, tokens: int, context_sum: int) -> int:
    """Forward FLOPs of a transformer stack on `tokens` positions: 2 per weight of its matrices per token (the
    dense layers) plus the attention scores and their weighted sum, `2 * 2 * width` per (query, key) pair, where
    `context_sum` is the number of such pairs (causal prefill of n tokens: n (n + 1) / 2)."""
    dense = sum(p.numel() for p in blocks.parameters() if p.dim() == 2)
    return 2 * dense * tokens + 4 * layers * width * context_sum


def causal_pairs(start: int, stop: int) -> int:
    """Query-key pairs of causal attention for query positions `start + 1 .. stop` (1-based): sum of positions."""
    return (stop * (stop + 1) - start * (start + 1)) // 2


def model_flops_per_image(policy, reward_model, args, loop: str) -> dict[str, float]:
    """Model FLOPs per image of one training step of `loop`, per phase, from the architectures (not measured).

    Captions are taken to run to `max_new_tokens` (T; the random GPT-2 rarely stops) after a prefix of P positions;
    a backward pass costs twice its forward. Generation: a prefill of P positions then T - 1 cached one-token steps,
    T logits rows. Log-prob forward (two-pass loops): P + T positions, T + 1 logits rows (the reference: P + T).
    The one-pass loop has no log-prob forward: its backward runs through the decoding graph. Retriever text: CLIP's
    text tower on 77 positions (captions of random words fill them), an estimate (GPT-2's forward is checked against
    torch's FLOP counter in tests/test_benchmark_throughput.py, the CLIP towers are not). The reference re-encodes
    each image with both CLIP image towers at every step; the DiscriTune loops read cached embeddings.
    """
    gpt2 = policy.language_model
    config = gpt2.config
    layers, width, vocab = config.n_layer, config.n_embd, config.vocab_size
    prefix, length = policy.config.prefix_length, args.max_new_tokens
    blocks = gpt2.transformer.h
    mapper = 2 * sum(p.numel() for p in policy.mapper.parameters() if p.dim() == 2)
    generation = (
        mapper
        + transformer_flops(blocks, layers, width, prefix + length - 1, causal_pairs(0, prefix + length - 1))
        + 2 * width * vocab * length
    )
    logits_rows = prefix + length if loop == "reference" else length + 1
    log_prob_forward = (
        mapper
        + transformer_flops(blocks, layers, width, prefix + length, causal_pairs(0, prefix + length))
        + 2 * width * vocab * logits_rows
    )
    clip = reward_model.retriever.model
    text = clip.transformer
    text_tokens = 77
    retriever_text = (
        transformer_flops(text, text.layers, text.width, text_tokens, causal_pairs(0, text_tokens))
        + 2 * clip.text_projection.numel()
    )
    flops = {"generation": float(generation), "retriever_text": float(retriever_text)}
    if loop == "one_pass":
        flops["log_prob_forward"] = 0.0
        flops["backward"] = 2.0 * generation
    else:
        flops["log_prob_forward"] = float(log_prob_forward)
        flops["backward"] = 2.0 * log_prob_forward
    if loop == "reference":
        visual = clip.visual
        patches = visual.grid_size[0] * visual.grid_size[1]
        tower = transformer_flops(
            visual.transformer, visual.transformer.layers, visual.transformer.width, patches + 1, (patches + 1) ** 2
        )
        tower += 2 * visual.conv1.weight.numel() * patches + 2 * (
            visual.proj.numel() if visual.proj is not None else 0
        )
        flops["image_encoding"] = 2.0 * tower  # the policy's and the retriever's tower
    flops["total"] = sum(flops.values())
    return flops


def peak_tflops(args, device: torch.device, precision: str) -> float | None:
    """The device's dense peak TFLOP/s at `precision`: `--peak_tflops` if given, else known GPUs by name."""
    if args.peak_tflops is not None:
        return args.peak_tflops
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, peaks in KNOWN_PEAK_TFLOPS.items():
            if key in name:
                return peaks[precision]
    return None


def add_utilisation(figures: dict, flops: dict, peak: float | None) -> None:
    """Model FLOPs per image, achieved FLOP/s and, when the peak is known, the fraction of it."""
    figures["model_flops_per_image"] = flops
    figures["achieved_tflops"] = flops["total"] * figures["images_per_second"] / 1e12
    figures["peak_tflops"] = peak
    figures["utilisation"] = figures["achieved_tflops"] / peak if peak else None


# ---------------------------------------------------------------------------------------------------- measuring


class PhaseTimer:
    """Accumulates wall time per phase, synchronising the accelerator so that queued work is counted."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @contextlib.contextmanager
    def phase(self, name: str):
        self.sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.sync()
            self.seconds[name] += time.perf_counter() - start

    def wrap(self, function, name: str):
        def timed(*args, **kwargs):
            with self.phase(name):
                return function(*args, **kwargs)

        return timed


class PeakMemory:
    """Peak accelerator memory (CUDA) or the process's peak resident memory (CPU), in MiB.

    On CPU it resets and reads Linux's resident high-water mark (`/proc/self/clear_refs`, `VmHWM`): no sampling
    thread, whose wake-ups would compete for the GIL and the cores with the loop being timed.
    """

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            with contextlib.suppress(OSError):
                with open("/proc/self/clear_refs", "w") as handle:
                    handle.write("5")  # resets VmHWM to the current resident size
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        with contextlib.suppress(OSError), open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    self.peak = int(line.split()[1]) * 1024
                    return
        self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # peak since start, not reset

    @property
    def mib(self) -> float:
        return self.peak / 2**20


def resident_bytes(device: torch.device) -> int:
    """Memory in use now: allocated accelerator memory (CUDA) or the process's resident size (CPU)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device)
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))


def full_copy_log_probs(logits: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """The token log-prob formula used before `gather_token_log_probs`: one `[B, T, V]` fp32 copy and a full-size
    log-sum-exp."""
    logits = logits.float()
    return logits.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(dim=-1)


def log_prob_memory(args, device: torch.device) -> dict:
    """Peak memory (MiB) of the log-prob pass, forward and backward, above the `[B, T, V]` logits it starts from."""
    vocab_size = len(tiny_clipcap_tokenizer()) if args.tiny else GPT2_VOCAB_SIZE
    shape = (args.batch_size, args.max_new_tokens, vocab_size)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    figures = {"logits_shape": list(shape)}
    for precision in args.precision:
        figures[precision] = {}
        for name, function in (("before", full_copy_log_probs), ("after", gather_token_log_probs)):
            generator = torch.Generator(device=device).manual_seed(0)
            logits = torch.randn(shape, generator=generator, device=device).to(dtypes[precision]).requires_grad_()
            token_ids = torch.randint(vocab_size, shape[:2], generator=generator, device=device)
            start = resident_bytes(device)
            with PeakMemory(device) as memory:
                function(logits, token_ids).sum().backward()
            figures[precision][name] = max(memory.peak - start, 0) / 2**20
            del logits, token_ids, memory
        before, after = figures[precision]["before"], figures[precision]["after"]
        print(
            f"log-prob pass, logits {list(shape)} {precision}: peak memory above the logits {before:.0f} MiB before "
            f"(full fp32 copy), {after:.0f} MiB after (row chunks)"
        )
    return figures


def summarise(
    step_seconds: list[float], cpu_seconds: list[float], timer: PhaseTimer, num_steps: int, batch_size: int, memory
) -> dict:
    step = float(np.mean(step_seconds))
    cpu = float(np.mean(cpu_seconds))
    phases = {name: timer.seconds[name] / num_steps for name in PHASES[:3]}
    phases["logprob_backward"] = max(step - sum(phases.values()), 0.0)
    return {
        "step_seconds": step,
        "images_per_second": batch_size / step,
        # CPU seconds this process spent per step (all its threads): on a CPU shared with other work, wall time
        # depends on the load while CPU time (with --threads 1) does not, so compare loops by this figure there.
        "cpu_seconds_per_step": cpu,
        "images_per_cpu_second": batch_size / cpu,
        "phase_seconds": phases,
        "phase_images_per_second": {name: batch_size / s if s > 0 else float("inf") for name, s in phases.items()},
        "peak_memory_mib": memory.mib,
    }


# ---------------------------------------------------------------------------------------------------- our loop


class StepTimes(TrainerCallback):
    """Wall time between consecutive step ends (data loading, the step, the optimizer: everything)."""

    def __init__(self, timer: PhaseTimer, warmup_steps: int):
        self.timer, self.warmup_steps, self.times, self._last = timer, warmup_steps, [], None
        self.cpu_times, self._last_cpu = [], None

    def on_step_begin(self, args, state, control, **kwargs):
        if self._last is None:  # no warm-up step: time the first step from its start
            self.timer.sync()
            self.timer.seconds.clear()
            self._last, self._last_cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        self.timer.sync()
        now, now_cpu = time.perf_counter(), time.process_time()
        if state.global_step == self.warmup_steps:  # warm-up ends: reset the phase sums
            self.timer.seconds.clear()
        elif state.global_step > self.warmup_steps:
            self.times.append(now - self._last)
            self.cpu_times.append(now_cpu - self._last_cpu)
        self._last, self._last_cpu = now, now_cpu


def time_discritune(
    policy,
    reward_model,
    dataset,
    args,
    precision: str,
    device: torch.device,
    one_pass: bool = False,
    static_cache: bool = False,
) -> dict:
    timer = PhaseTimer(device)
    with tempfile.TemporaryDirectory() as output_dir:
        config = DiscriTuneConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch_size,
            pool_size=args.pool_size if args.pool_size is not None else min(100, args.batch_size),
            max_steps=args.warmup_steps + args.steps,
            max_completion_length=args.max_new_tokens,
            learning_rate=1e-7,
            bf16=precision == "bf16",
            fp16=precision == "fp16",
            use_cpu=device.type == "cpu",
            logging_strategy="no",
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            dataloader_num_workers=0,
            seed=0,
            logprobs_from_generation="true" if one_pass else "false",
            static_cache_decoding="true" if static_cache else "false",
        )
        trainer = DiscriTuneTrainer(model=policy, reward_model=reward_model, args=config, train_dataset=dataset)
        trainer.data_collator = timer.wrap(trainer.data_collator, "image_encoding")
        trainer._encode_policy_images = timer.wrap(trainer._encode_policy_images, "image_encoding")
        trainer._generate = timer.wrap(trainer._generate, "generation")
        trainer._reward = timer.wrap(trainer._reward, "reward")
        steps = StepTimes(timer, args.warmup_steps)
        trainer.add_callback(steps)
        with PeakMemory(device) as memory:
            trainer.train()
    return summarise(steps.times, steps.cpu_times, timer, args.steps, args.batch_size, memory)


# ---------------------------------------------------------------------------------------------------- reference


class RowByRowStopProcessor(LogitsProcessor):
    """The reference's stopping: for every row, in Python, force EOS once the last token holds a full stop."""

    def __init__(self, stop_token_ids: list[int], eos_token_id: int):
        self.stop_token_ids, self.eos_token_id = set(stop_token_ids), eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.shape[1] == 0:  # the first token, right after the prefix
            return scores
        for row in range(input_ids.shape[0]):
            if input_ids[row, -1].item() in self.stop_token_ids:
                scores[row] = float("-inf")
                scores[row, self.eos_token_id] = 0.0
        return scores


def reference_step(policy, retriever, pixel_values, optimizer, baseline, args, timer: PhaseTimer) -> None:
    tokenizer, gpt2 = policy.tokenizer, policy.language_model
    eos = tokenizer.eos_token_id
    with timer.phase("image_encoding"), torch.no_grad():
        policy_features = policy.visual(pixel_values)  # [B, D]
        image_embeds = retriever.model.encode_image(pixel_values, normalize=True)  # [B, D]
    with timer.phase("generation"):
        prefix = policy.mapper(policy_features)  # [B, P, E], with gradients (reused by the second pass)
        generated = gpt2.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
            max_new_tokens=args.max_new_tokens,
            do_sample=False,
            num_beams=1,
            logits_processor=LogitsProcessorList([RowByRowStopProcessor(policy.stop_token_ids, eos)]),
            eos_token_id=eos,
            pad_token_id=eos,
        )  # [B, T]
        texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
    with timer.phase("reward"), torch.no_grad():
        tokens = retriever.tokenize(texts, trim=False).to(pixel_values.device)  # [B, 77]
        text_embeds = retriever.model.encode_text(tokens, normalize=True)  # [B, D]
        logits = retriever.logit_scale * text_embeds @ image_embeds.T  # [B, B]
        rewards = logits.log_softmax(dim=-1).diagonal()  # [B]
    # The teacher-forced pass, loss, backward and optimizer step: "logprob_backward" (the rest of the step).
    token_embeds = gpt2.get_input_embeddings()(generated)  # [B, T, E]
    all_logits = gpt2(inputs_embeds=torch.cat([prefix, token_embeds], dim=1)).logits  # [B, P + T, V]
    log_probs = all_logits[:, prefix.shape[1] - 1 : -1].log_softmax(dim=-1)  # [B, T, V]
    token_log_probs = log_probs.gather(-1, generated.unsqueeze(-1)).squeeze(-1)  # [B, T]
    after_end = (generated == eos).cumsum(dim=1) > 0
    lengths = (generated.shape[1] - after_end.sum(dim=1) + 1).clamp(max=generated.shape[1])
    caption_log_probs = (token_log_probs * (~after_end)).sum(dim=1) / lengths  # [B]
    loss = -((rewards - baseline["mean"]) * caption_log_probs).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    baseline["count"] += 1
    baseline["mean"] += (rewards.mean().item() - baseline["mean"]) / baseline["count"]


def time_reference(policy, reward_model, images, args, device: torch.device) -> dict:
    retriever = reward_model.retriever
    policy.train()
    pixel_batches = [
        policy.preprocess(images[start : start + args.batch_size]).to(device)
        for start in range(0, len(images), args.batch_size)
    ]
    optimizer = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-7)
    baseline, timer, times, cpu_times = {"mean": 0.0, "count": 0}, PhaseTimer(device), [], []
    with PeakMemory(device) as memory:
        for index in range(args.warmup_steps + args.steps):
            if index == args.warmup_steps:
                timer.seconds.clear()
            timer.sync()
            start, start_cpu = time.perf_counter(), time.process_time()
            reference_step(
                policy, retriever, pixel_batches[index % len(pixel_batches)], optimizer, baseline, args, timer
            )
            timer.sync()
            if index >= args.warmup_steps:
                times.append(time.perf_counter() - start)
                cpu_times.append(time.process_time() - start_cpu)
    return summarise(times, cpu_times, timer, args.steps, args.batch_size, memory)


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny random models instead of ViT-B/32 + GPT-2 124M.")
    parser.add_argument(
        "--batch_size", type=int, nargs="+", default=[16], help="Images per step; several values run a sweep."
    )
    parser.add_argument(
        "--pool_size",
        type=int,
        default=None,
        help="DiscriTune's candidate pools (default: the batch, up to 100): --batch_size 1000 --pool_size 100 trains "
        "10 pools of 100, the paper's task ten times per step. The reference loop always scores each caption against "
        "the whole batch (its logits are [B, B]; the cost difference is negligible next to generation).",
    )
    parser.add_argument(
        "--loops",
        nargs="+",
        default=list(LOOPS[:3]),
        choices=LOOPS,
        help="reference: the paper's loop (fp32); two_pass: DiscriTuneTrainer decoding without gradients then a "
        "teacher-forced pass; one_pass: log-probs from the decoding pass (logprobs_from_generation=true); "
        "two_pass_static: two_pass decoding with a static KV cache, compiled by generate on CUDA "
        "(static_cache_decoding=true). All but the reference in every --precision.",
    )
    parser.add_argument(
        "--peak_tflops",
        type=float,
        default=None,
        help="The device's dense peak TFLOP/s, for the utilisation figure (H100/H200 are known).",
    )
    parser.add_argument("--steps", type=int, default=3, help="Timed steps per loop.")
    parser.add_argument("--warmup_steps", type=int, default=1, help="Untimed steps before them.")
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's choice). On a CPU shared with other processes use 1: with more, "
        "every op waits at a barrier for threads the scheduler has parked.",
    )
    parser.add_argument("--skip_reference", action="store_true", help="Same as leaving reference out of --loops.")
    parser.add_argument(
        "--log_prob_memory",
        action="store_true",
        help="Measure only the peak memory of the token log-prob pass, before and after row chunking.",
    )
    parser.add_argument(
        "--in_process",
        action="store_true",
        help="Time every loop in this process (quick, for tests). By default each loop runs in a fresh process with "
        "the same seeded models and batch: a Trainer that ran before slows the next one down in the same process.",
    )
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: the loop a child process times
    parser.add_argument("--json", default=None, help="Write the figures to this file.")
    args = parser.parse_args(argv)
    if args.skip_reference:
        args.loops = [loop for loop in args.loops if loop != "reference"]
    return args


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    command = " ".join(["python", "benchmarks/throughput.py", *argv])
    if args.log_prob_memory:
        args.batch_size = args.batch_size[0]
        figures = {"command": command, "device": str(device), "log_prob_memory_mib": log_prob_memory(args, device)}
        write_json(args.json, figures)
        return figures
    if len(args.batch_size) == 1:
        results = run_batch(args, argv, device, args.batch_size[0])
        if args.only is None:
            results["command"] = command
            write_json(args.json, results)
        return results
    # A sweep: each batch size as a run of its own, then how images/s and peak memory grow with the batch.
    sweep = {str(size): run_batch(args, argv, device, size) for size in args.batch_size}
    results = {"command": command, "batch_sizes": args.batch_size, "sweep": sweep}
    print("batch sweep (img/s, peak memory MiB):")
    for size, figures in sweep.items():
        loops = [("reference", figures.get("reference"))]
        for key, name in (
            ("discritune", "two_pass"),
            ("one_pass", "one_pass"),
            ("two_pass_static", "two_pass_static"),
        ):
            loops += [(f"{name} {p}", f) for p, f in figures.get(key, {}).items()]
        print(
            f"  batch {size}: "
            + "; ".join(
                f"{name} {f['images_per_second']:.2f} img/s, {f['peak_memory_mib']:.0f} MiB" for name, f in loops if f
            )
        )
    write_json(args.json, results)
    return results


def write_json(path: str | None, figures: dict) -> None:
    if path:
        with open(path, "w") as handle:
            json.dump(figures, handle, indent=2)


def run_batch(args, argv: list[str], device: torch.device, batch_size: int) -> dict:
    """Every asked loop at one batch size (each in its own process unless --in_process), with its model FLOPs."""
    args = argparse.Namespace(**{**vars(args), "batch_size": batch_size})
    if args.only is not None:  # a child process: time one loop and hand the figures back
        figures = time_one(args.only, args, device)
        write_json(args.json, figures)
        return figures
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "models": "tiny" if args.tiny else "CLIP ViT-B/32 + GPT-2 124M (random weights)",
        "batch_size": batch_size,
        "pool_size": args.pool_size if args.pool_size is not None else min(100, batch_size),
        "timed_steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "max_new_tokens": args.max_new_tokens,
    }
    loops = ["reference"] if "reference" in args.loops else []
    loops += [f"{loop}:{precision}" for loop in LOOPS[1:] if loop in args.loops for precision in args.precision]
    inputs = build_inputs(args, device) if args.in_process else None  # else each child process builds its own
    timed = {loop: time_loop(loop, args, argv, inputs, device) for loop in loops}
    failed = [loop for loop, figures in timed.items() if "failed" in figures]
    if failed:
        results["failed_loops"] = failed
        timed = {loop: figures for loop, figures in timed.items() if loop not in failed}
    if "reference" in timed:
        results["reference"] = timed["reference"]
        results["cache"] = results["reference"].pop("cache")
        report(f"batch {batch_size}, reference (fp32)", results["reference"])
    for loop in LOOPS[1:]:
        key = "discritune" if loop == "two_pass" else loop  # "discritune": the two-pass step, as before
        for precision in args.precision:
            if f"{loop}:{precision}" not in timed:
                continue
            figures = timed[f"{loop}:{precision}"]
            if "reference" in results:
                figures["speedup_vs_reference"] = (
                    figures["images_per_second"] / results["reference"]["images_per_second"]
                )
                figures["cpu_speedup_vs_reference"] = (
                    figures["images_per_cpu_second"] / results["reference"]["images_per_cpu_second"]
                )
            results.setdefault(key, {})[precision] = figures
            results["cache"] = figures.pop("cache")
            report(f"batch {batch_size}, {loop} ({precision})", figures)
    if "cache" in results:
        cache = results["cache"]
        print(
            f"one-off cache pass: {cache['images']} images in {cache['seconds']:.2f} s "
            f"({cache['images_per_second']:.1f} img/s)"
        )
    return results


def build_inputs(args, device: torch.device) -> dict:
    """The seeded models, the images of every step, and the dataset with its frozen embeddings cached (timed)."""
    policy, reward_model = build_models(args.tiny)
    policy.to(device)
    reward_model.to(device)
    image_size = policy.config.clip_preprocess_cfg["size"]
    images = random_images(args.batch_size * (args.warmup_steps + args.steps), image_size)
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    start = time.perf_counter()
    cached = cache_frozen_embeddings(dataset, policy, reward_model, batch_size=min(args.batch_size, 256))
    seconds = time.perf_counter() - start
    cache = {"images": len(dataset), "seconds": seconds, "images_per_second": len(dataset) / seconds}
    return {"policy": policy, "reward_model": reward_model, "images": images, "cached": cached, "cache": cache}


def time_one(loop: str, args, device: torch.device, inputs: dict | None = None) -> dict:
    """Time one loop (`"reference"`, `"two_pass:bf16"`, ...) and add its model FLOPs and utilisation."""
    inputs = inputs or build_inputs(args, device)
    policy, reward_model = inputs["policy"], inputs["reward_model"]
    name, _, precision = loop.partition(":")
    if name == "reference":
        figures = time_reference(policy, reward_model, inputs["images"], args, device)
        precision = "fp32"
    else:
        figures = time_discritune(
            policy,
            reward_model,
            inputs["cached"],
            args,
            precision,
            device,
            one_pass=name == "one_pass",
            static_cache=name == "two_pass_static",
        )
    flops = model_flops_per_image(policy, reward_model, args, "one_pass" if name == "one_pass" else name)
    add_utilisation(figures, flops, peak_tflops(args, device, precision))
    figures["cache"] = inputs["cache"]
    return figures


def time_loop(loop: str, args, argv, inputs: dict | None, device: torch.device) -> dict:
    """Figures of one loop, timed here (`inputs` given: --in_process) or in a fresh child process."""
    if inputs is not None:
        return time_one(loop, args, device, inputs)
    own_args = without_option(without_option(argv, "--json", 1), "--batch_size", len(args_batch_sizes(argv)))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "figures.json")
        result = subprocess.run(
            [
                sys.executable, os.path.abspath(__file__), *own_args,
                "--batch_size", str(args.batch_size), "--only", loop, "--json", path,
            ],
        )  # fmt: skip
        if result.returncode != 0:  # reported, and the other loops still run
            print(f"batch {args.batch_size}, {loop}: FAILED (exit code {result.returncode}, its output is above)")
            return {"failed": result.returncode}
        with open(path) as handle:
            return json.load(handle)


def args_batch_sizes(argv: list[str]) -> list[str]:
    """The values given to --batch_size in `argv` (none when it is not given)."""
    if "--batch_size" not in argv:
        return []
    values, index = [], argv.index("--batch_size") + 1
    while index < len(argv) and not argv[index].startswith("--"):
        values.append(argv[index])
        index += 1
    return values


def without_option(argv: list[str], option: str, num_values: int) -> list[str]:
    """`argv` without `option` and the `num_values` values after it."""
    if option not in argv:
        return list(argv)
    index = argv.index(option)
    return argv[:index] + argv[index + 1 + num_values :]


def report(name: str, figures: dict) -> None:
    phases = ", ".join(f"{phase} {ips:.1f}" for phase, ips in figures["phase_images_per_second"].items())
    ratio = f", {figures['speedup_vs_reference']:.2f}x the reference" if "speedup_vs_reference" in figures else ""
    cpu_ratio = f", {figures['cpu_speedup_vs_reference']:.2f}x" if "cpu_speedup_vs_reference" in figures else ""
    utilisation = (
        f" = {100 * figures['utilisation']:.1f}% of {figures['peak_tflops']:.0f}" if figures["utilisation"] else ""
    )
    print(
        f"{name}: {figures['images_per_second']:.2f} img/s ({figures['step_seconds']:.2f} s/step{ratio}); "
        f"{figures['images_per_cpu_second']:.2f} img per CPU second ({figures['cpu_seconds_per_step']:.2f} CPU s/step"
        f"{cpu_ratio}); "
        f"per phase img/s: {phases}; peak memory {figures['peak_memory_mib']:.0f} MiB; "
        f"{figures['model_flops_per_image']['total'] / 1e9:.3g} GFLOP/image, "
        f"{figures['achieved_tflops']:.3g} TFLOP/s{utilisation}"
    )


if __name__ == "__main__":
    main()
