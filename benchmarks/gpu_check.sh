#!/usr/bin/env bash
# Every GPU check of the throughput work, in a few minutes on one H100/H200-class GPU (not yet run: the machines
# these figures were first measured on had no GPU). Run from anywhere: `bash benchmarks/gpu_check.sh`.
#
# 1. A tiny-model smoke test: fp32, bf16 and fp16 DiscriTune steps run on CUDA (fp16 is the V100 users' precision).
# 2. The issue's GPU target: full-size models (CLIP ViT-B/32 + GPT-2 124M) at the paper's batch of 100, bf16 (and fp16,
#    fp32) against the fp32 reference loop, reporting images/second per phase and peak memory; target >= 3x.
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

"$PYTHON" benchmarks/throughput.py --tiny --device "$DEVICE" --batch_size 16 --steps 2 --warmup_steps 1 \
    --precision fp32 bf16 fp16 --json "$OUT/tiny_b16.json"

"$PYTHON" benchmarks/throughput.py "${FULL_SIZE[@]}" --device "$DEVICE" --batch_size 100 --steps 5 --warmup_steps 2 \
    --precision bf16 fp16 fp32 --json "$OUT/full_b100.json"

"$PYTHON" - "$OUT/full_b100.json" <<'PY'
import json, sys

figures = json.load(open(sys.argv[1]))
print(f"{figures['models']} on {figures['device']}, batch {figures['batch_size']}:")
for precision, loop in figures["discritune"].items():
    print(
        f"  {precision}: {loop['images_per_second']:.1f} img/s, {loop['speedup_vs_reference']:.2f}x the reference "
        f"({figures['reference']['images_per_second']:.1f} img/s), peak {loop['peak_memory_mib']:.0f} MiB"
    )
speedup = figures["discritune"]["bf16"]["speedup_vs_reference"]
print(f"batch 100 bf16: {speedup:.2f}x the reference loop (target >= 3x): {'MET' if speedup >= 3 else 'NOT MET'}")
PY
