#!/usr/bin/env bash
# Every GPU check of the throughput work, in a few minutes on one H100/H200-class GPU (not yet run: the machines
# these figures were first measured on had no GPU). Run from anywhere: `bash benchmarks/gpu_check.sh`.
#
# 1. A tiny-model smoke test: fp32, bf16 and fp16 DiscriTune steps run on CUDA (fp16 is the V100 users' precision).
# 2. The issue's GPU target: full-size models (CLIP ViT-B/32 + GPT-2 124M) at the paper's batch of 100, bf16 (and fp16,
#    fp32) against the fp32 reference loop, reporting images/second per phase and peak memory; target >= 3x.
# Figures go to $OUT (default benchmarks/gpu_results); the last line says whether the target was met.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PYTHON=${PYTHON:-python}
OUT=${OUT:-benchmarks/gpu_results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"

"$PYTHON" benchmarks/throughput.py --tiny --device cuda --batch_size 16 --steps 2 --warmup_steps 1 \
    --precision fp32 bf16 fp16 --json "$OUT/tiny_b16.json"

"$PYTHON" benchmarks/throughput.py --device cuda --batch_size 100 --steps 5 --warmup_steps 2 \
    --precision bf16 fp16 fp32 --json "$OUT/full_b100.json"

"$PYTHON" - "$OUT/full_b100.json" <<'PY'
import json, sys

figures = json.load(open(sys.argv[1]))
speedup = figures["discritune"]["bf16"]["speedup_vs_reference"]
print(f"batch 100 bf16: {speedup:.2f}x the reference loop (target >= 3x): {'MET' if speedup >= 3 else 'NOT MET'}")
PY
