#!/usr/bin/env bash
# Fetch, on a connected machine, the wheels that benchmarks/gpu_check.sh needs on a GPU machine that has no package
# index, for CPython 3.12 on manylinux x86-64: the packages the benchmark imports that the device image (PyTorch,
# transformers, accelerate, numpy, pandas, huggingface_hub...) lacks, at the versions installed here. gpu_check.sh
# installs whatever it finds in .whl/ before it starts. `bash benchmarks/gpu_wheels.sh` writes ./.whl (git-ignored).
#
# Kept under the device tool's 64 MiB per call: pyarrow is taken at 24.0.0 (datasets' floor, 49 MB) rather than the
# newest (55 MB), and transformers is not carried: the image's 5.17 runs this project's suite except GIT's cached
# generation (a transformers 5.17 bug; the benchmark does not use GIT). trl and evaluate are not imported by it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
PACKAGES=(peft open_clip_torch timm ftfy wcwidth regex datasets dill multiprocess fsspec)
pins=$("$PYTHON" - "${PACKAGES[@]}" <<'PY'
import sys
from importlib.metadata import version

print(" ".join(f"{name}=={version(name)}" for name in sys.argv[1:]))
PY
)
rm -rf .whl && mkdir -p .whl
# shellcheck disable=SC2086
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $pins pyarrow==24.0.0
ls .whl
du -sh .whl
