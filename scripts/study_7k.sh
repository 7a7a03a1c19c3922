#!/usr/bin/env bash
# The optimizer study of issue 6 at 7000 iterations (the paper-study preset, 3 seeds), run in
# priority order on a 2-core machine: two runs at a time, one thread each.
#
# Each step is one `trsplat bench optimizers` invocation over a growing set of variants, so a
# step skips what earlier steps (or earlier sessions) finished. Finished runs keep their
# config.json and metrics.json in git (benchmarks/results/study-7k/runs/), so a fresh clone
# resumes the grid where the last commit left it; an interrupted run resumes from its local
# checkpoint when there is one, and starts again otherwise. Stop at any time (Ctrl-C / kill);
# run the script again to go on. Measured on the 2-core VM (one thread, next to another run), a
# bird run takes 19-21 min with adam and 23-26 min with tr-hutchinson, evaluations included;
# a chair run (100k Gaussians) took 99 min (adam) and 114 min (tr-hutchinson-paper) in the same
# setting with a third job on the cores part of the time; a synthetic run took 8-13 min. On a
# faster 2-core VM (session 7, same setting) a bird run took 7-9 min, a chair run 27-38 min and a
# synthetic run 3-6 min.
#
# Usage: bash scripts/study_7k.sh [FIRST_STEP]   (default 1; see the steps below)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=benchmarks/results/study-7k
first=${1:-1}

KEY="adam,tr-hutchinson-paper,tr-hutchinson-rebuttal,tr-none-rebuttal"
MORE="$KEY,tr-none-paper"
ALL="$MORE,adam-tr-paper,adam-tr-rebuttal,tr-gnb-paper,tr-gnb-rebuttal"
steps=(
    "colmap_bird $KEY"        # 1: Adam, 3DGS²-TR at both ε, and its curvature-free control (rebuttal ε)
    "colmap_bird $MORE"       # 2: the curvature-free control at the paper's ε
    "colmap_bird $ALL"        # 3: the rest of the 9 variants (ADAM-TR, gnb)
    "synthetic $ALL"          # 4
    "nerf_synthetic_chair $ALL"  # 5
)

for ((i = first; i <= ${#steps[@]}; i++)); do
    set -- ${steps[i - 1]}
    echo "== step $i: $1: $2"
    .venv/bin/trsplat bench optimizers --out "$OUT" --preset paper-study --iters 7000 \
        --scenes "$1" --variants "$2" --jobs 2 --threads 1
    rc=$?
    if [ $rc -eq 130 ]; then exit 130; fi   # interrupted: stop here, resume later
done
