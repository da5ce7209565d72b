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


def summarise(step_seconds: list[float], timer: PhaseTimer, num_steps: int, batch_size: int, memory) -> dict:
    step = float(np.mean(step_seconds))
    phases = {name: timer.seconds[name] / num_steps for name in PHASES[:3]}
    phases["logprob_backward"] = max(step - sum(phases.values()), 0.0)
    return {
        "step_seconds": step,
        "images_per_second": batch_size / step,
        "phase_seconds": phases,
        "phase_images_per_second": {name: batch_size / s if s > 0 else float("inf") for name, s in phases.items()},
        "peak_memory_mib": memory.mib,
    }


# ---------------------------------------------------------------------------------------------------- our loop


class StepTimes(TrainerCallback):
    """Wall time between consecutive step ends (data loading, the step, the optimizer: everything)."""

    def __init__(self, timer: PhaseTimer, warmup_steps: int):
        self.timer, self.warmup_steps, self.times, self._last = timer, warmup_steps, [], None

    def on_step_end(self, args, state, control, **kwargs):
        self.timer.sync()
        now = time.perf_counter()
        if state.global_step == self.warmup_steps:  # warm-up ends: reset the phase sums
            self.timer.seconds.clear()
        elif state.global_step > self.warmup_steps:
            self.times.append(now - self._last)
        self._last = now


def time_discritune(policy, reward_model, dataset, args, precision: str, device: torch.device) -> dict:
    timer = PhaseTimer(device)
    with tempfile.TemporaryDirectory() as output_dir:
        config = DiscriTuneConfig(
            output_dir=output_dir,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.warmup_steps + args.steps,
            max_new_tokens=args.max_new_tokens,
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
    return summarise(steps.times, timer, args.steps, args.batch_size, memory)


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
    baseline, timer, times = {"mean": 0.0, "count": 0}, PhaseTimer(device), []
    with PeakMemory(device) as memory:
        for index in range(args.warmup_steps + args.steps):
            if index == args.warmup_steps:
                timer.seconds.clear()
            timer.sync()
            start = time.perf_counter()
            reference_step(
                policy, retriever, pixel_batches[index % len(pixel_batches)], optimizer, baseline, args, timer
            )
            timer.sync()
            if index >= args.warmup_steps:
                times.append(time.perf_counter() - start)
    return summarise(times, timer, args.steps, args.batch_size, memory)


# ---------------------------------------------------------------------------------------------------- main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="Tiny random models instead of ViT-B/32 + GPT-2 124M.")
    parser.add_argument("--batch_size", type=int, default=16)
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
    parser.add_argument("--skip_reference", action="store_true")
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
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    datasets.disable_progress_bars()
    if args.log_prob_memory:
        figures = {
            "command": " ".join(["python", "benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)])
        }
        figures.update(device=str(device), log_prob_memory_mib=log_prob_memory(args, device))
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(figures, handle, indent=2)
        return figures
    policy, reward_model = build_models(args.tiny)
    policy.to(device)
    reward_model.to(device)
    image_size = policy.config.clip_preprocess_cfg["size"]
    images = random_images(args.batch_size * (args.warmup_steps + args.steps), image_size)
    dataset = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())

    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "models": "tiny" if args.tiny else "CLIP ViT-B/32 + GPT-2 124M (random weights)",
        "batch_size": args.batch_size,
        "timed_steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "max_new_tokens": args.max_new_tokens,
        "command": " ".join(["python", "benchmarks/throughput.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    start = time.perf_counter()
    cached = cache_frozen_embeddings(dataset, policy, reward_model, batch_size=args.batch_size)
    cache_seconds = time.perf_counter() - start
    results["cache"] = {"seconds": cache_seconds, "images_per_second": len(dataset) / cache_seconds}
    loops = ([] if args.skip_reference else ["reference"]) + list(args.precision)
    if args.only is not None:  # a child process: time one loop and hand the figures back
        figures = (
            time_reference(policy, reward_model, images, args, device)
            if args.only == "reference"
            else time_discritune(policy, reward_model, cached, args, args.only, device)
        )
        with open(args.json, "w") as handle:
            json.dump(figures, handle)
        return figures
    timed = {loop: time_loop(loop, args, argv, policy, reward_model, images, cached, device) for loop in loops}
    if not args.skip_reference:
        results["reference"] = timed["reference"]
        report("reference (fp32)", results["reference"])
    results["discritune"] = {}
    for precision in args.precision:
        figures = timed[precision]
        if not args.skip_reference:
            figures["speedup_vs_reference"] = figures["images_per_second"] / results["reference"]["images_per_second"]
        results["discritune"][precision] = figures
        report(f"discritune ({precision})", figures)
    print(
        f"one-off cache pass: {len(dataset)} images in {cache_seconds:.2f} s ({len(dataset) / cache_seconds:.1f} img/s)"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)
    return results


def time_loop(loop: str, args, argv, policy, reward_model, images, cached, device: torch.device) -> dict:
    """Figures of one loop (`"reference"` or a precision), timed here or in a fresh child process."""
    if args.in_process:
        if loop == "reference":
            return time_reference(policy, reward_model, images, args, device)
        return time_discritune(policy, reward_model, cached, args, loop, device)
    own_args = [arg for arg in (sys.argv[1:] if argv is None else argv)]
    if "--json" in own_args:  # the child writes its own figures file
        index = own_args.index("--json")
        del own_args[index : index + 2]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "figures.json")
        subprocess.run(
            [sys.executable, os.path.abspath(__file__), *own_args, "--only", loop, "--json", path], check=True
        )
        with open(path) as handle:
            return json.load(handle)


def report(name: str, figures: dict) -> None:
    phases = ", ".join(f"{phase} {ips:.1f}" for phase, ips in figures["phase_images_per_second"].items())
    ratio = f", {figures['speedup_vs_reference']:.2f}x the reference" if "speedup_vs_reference" in figures else ""
    print(
        f"{name}: {figures['images_per_second']:.2f} img/s ({figures['step_seconds']:.2f} s/step{ratio}); "
        f"per phase img/s: {phases}; peak memory {figures['peak_memory_mib']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
