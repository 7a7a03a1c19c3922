#!/usr/bin/env bash
# The timing benchmarks of issues 4 and 5, meant for an otherwise idle machine (both cores).
# Results: benchmarks/results/*.json (+ .md tables). Takes ~10 min on the 2-core VM.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
R=benchmarks/results
T=.venv/bin/trsplat
CHAIR="--data ../shared/data/nerf_synthetic_chair --downscale 4 --n-random-init 100000"
$T bench render --out $R/render_bench.json | tee $R/render_bench.md
$T bench iteration $CHAIR --optimizers adam,adam-tr,tr --out $R/iteration_chair_ds4.json | tee $R/iteration_chair_ds4.md
# the process settings of the trsplat command, each turned off once (adam only)
TRSPLAT_MALLOC_TUNING=0 $T bench iteration $CHAIR --optimizers adam \
    --out $R/iteration_chair_ds4_no_malloc_tuning.json | tee $R/iteration_chair_ds4_no_malloc_tuning.md
OMP_WAIT_POLICY=ACTIVE $T bench iteration $CHAIR --optimizers adam \
    --out $R/iteration_chair_ds4_omp_active.json | tee $R/iteration_chair_ds4_omp_active.md
