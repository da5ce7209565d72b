#!/usr/bin/env bash
# Every GPU check of the throughput work, in a few minutes on one H100/H200-class GPU (not yet run: the machines
# these figures were first measured on had no GPU). Run from anywhere: `bash benchmarks/gpu_check.sh`.
#
# 1. A tiny-model smoke test: fp32, bf16 and fp16 DiscriTune steps (two-pass and one-pass) run on CUDA (fp16 is the
#    V100 users' precision).
# 2. The issue's GPU target: full-size models (CLIP ViT-B/32 + GPT-2 124M) at the paper's batch of 100, the two-pass
#    and the one-pass step in bf16 and fp16 against the fp32 reference loop, reporting images/second per phase, peak
#    memory, model FLOPs per image, achieved FLOP/s and the fraction of the GPU's peak; target >= 3x.
# 3. The two-pass step decoding with a static KV cache compiled by generate (static_cache_decoding), bf16.
# 4. Candidate pools (issue 15): batch 1,000 in 10 pools of 100 on one GPU, the two-pass step in bf16 and fp16,
#    against the reference loop at the same batch: images/second, ratio, peak memory.
# Figures go to $OUT (default benchmarks/gpu_results); the last line says whether the target was met.
#
# On a machine without a package index, first run `bash benchmarks/gpu_wheels.sh` where pip works and bring .whl/
# along: the wheels found there are installed (into /tmp/site) before anything else.
# `DRY_RUN=1 DEVICE=cpu bash benchmarks/gpu_check.sh` walks the same steps on CPU with tiny models (seconds), to check
# the script itself before GPU time is spent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-benchmarks/gpu_results}
mkdir -p "$OUT"
if [ -z "${DRY_RUN:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then  # (wheels are for the GPU machine)
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
"$PYTHON" - <<'PY' | tee "$OUT/versions.txt"
from importlib.metadata import version

import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}, available: {torch.cuda.is_available()})")
for name in ("transformers", "accelerate", "peft", "datasets", "pyarrow", "open_clip_torch", "timm"):
    print(f"{name} {version(name)}")
PY

FULL_SIZE=()
[ -n "${DRY_RUN:-}" ] && FULL_SIZE=(--tiny)  # the same steps with tiny models, to check the script itself

# 1. Smoke test, tiny models, the two-pass and one-pass steps in one process (seconds; the static cache is left to
#    step 3, whose compilations are the slow part).
"$PYTHON" benchmarks/throughput.py --tiny --device "$DEVICE" --batch_size 16 --steps 1 --warmup_steps 1 \
    --loops two_pass one_pass --precision fp32 bf16 fp16 --in_process --json "$OUT/tiny_b16.json"

# 2. Full size, the paper's batch of 100: the reference loop (fp32) against the two-pass and the one-pass step
#    (logprobs_from_generation) in bf16 and fp16, each loop in its own process, with FLOPs and utilisation.
"$PYTHON" benchmarks/throughput.py "${FULL_SIZE[@]}" --device "$DEVICE" --batch_size 100 --steps 2 --warmup_steps 1 \
    --loops reference two_pass one_pass --precision bf16 fp16 --json "$OUT/full_b100.json"

# 3. Decoding with a static KV cache, compiled by generate (static_cache_decoding), two-pass bf16: the warm-up steps
#    pay the compilation, the timed ones show the decoding speed.
"$PYTHON" benchmarks/throughput.py "${FULL_SIZE[@]}" --device "$DEVICE" --batch_size 100 --steps 2 --warmup_steps 1 \
    --loops two_pass_static --precision bf16 --json "$OUT/full_b100_static.json" \
    || echo "static-cache step failed (see above); the summary leaves it out"

# 4. Batch 1,000 in pools of 100 (the paper's task ten times per step), bf16 and fp16, against the reference loop.
POOL_STEPS=(--steps 2 --warmup_steps 1)
[ -n "${DRY_RUN:-}" ] && POOL_STEPS=(--steps 1 --warmup_steps 1 --max_new_tokens 8)
"$PYTHON" benchmarks/throughput.py "${FULL_SIZE[@]}" --device "$DEVICE" --batch_size 1000 --pool_size 100 \
    "${POOL_STEPS[@]}" --loops reference two_pass --precision bf16 fp16 --json "$OUT/full_b1000_pools100.json" \
    || echo "batch 1000 in pools of 100 failed (see above)"
"$PYTHON" - "$OUT/full_b1000_pools100.json" <<'PY' || true
import json, sys

figures = json.load(open(sys.argv[1]))
reference = figures["reference"]["images_per_second"]
print(f"{figures['models']} on {figures['device']}, batch {figures['batch_size']} in pools of {figures['pool_size']}:")
for precision, loop in figures.get("discritune", {}).items():
    print(
        f"  two-pass {precision}: {loop['images_per_second']:.1f} img/s, {loop['images_per_second'] / reference:.2f}x "
        f"the reference at the same batch ({reference:.1f} img/s), peak {loop['peak_memory_mib']:.0f} MiB"
    )
PY

"$PYTHON" - "$OUT/full_b100.json" "$OUT/full_b100_static.json" <<'PY'
import json, sys

import os

figures = json.load(open(sys.argv[1]))
static = json.load(open(sys.argv[2])) if os.path.exists(sys.argv[2]) else {}
for loop in figures.get("failed_loops", []) + static.get("failed_loops", []):
    print(f"  {loop}: FAILED (its output is above)")
reference = figures["reference"]
print(f"{figures['models']} on {figures['device']}, batch {figures['batch_size']}, {figures['max_new_tokens']} tokens:")


def line(name, loop):
    utilisation = f", {100 * loop['utilisation']:.1f}% of peak" if loop.get("utilisation") else ""
    ratio = loop["images_per_second"] / reference["images_per_second"]
    print(
        f"  {name:<22} {loop['images_per_second']:8.1f} img/s {ratio:5.2f}x the reference, "
        f"peak {loop['peak_memory_mib']:6.0f} MiB, {loop['model_flops_per_image']['total'] / 1e9:6.1f} GFLOP/img, "
        f"{loop['achieved_tflops']:6.2f} TFLOP/s{utilisation}"
    )


line("reference fp32", reference)
for key, name in (("discritune", "two-pass"), ("one_pass", "one-pass")):
    for precision, loop in figures.get(key, {}).items():
        line(f"{name} {precision}", loop)
for precision, loop in static.get("two_pass_static", {}).items():
    line(f"two-pass {precision} static", loop)
best = max(
    (loop["images_per_second"], f"{name} {precision}")
    for key, name in (("discritune", "two-pass"), ("one_pass", "one-pass"))
    for precision, loop in figures.get(key, {}).items()
    if precision == "bf16"
)
speedup = best[0] / reference["images_per_second"]
print(f"batch 100 bf16, best ({best[1]}): {speedup:.2f}x the reference loop (target >= 3x): {'MET' if speedup >= 3 else 'NOT MET'}")
PY
