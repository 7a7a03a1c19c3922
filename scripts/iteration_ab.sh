#!/usr/bin/env bash
# Seconds per training iteration of an old commit against the working tree's HEAD, interleaved in
# one window (issue 22's before/after; meant for an otherwise idle machine).
# usage: [ROUNDS=3 TRAINED_ROUNDS=2] scripts/iteration_ab.sh OLD_COMMIT OUT_DIR [TRAINED_PLY]
#   - chair --downscale 4, 100k random init: `trsplat bench iteration`, adam and tr, ROUNDS rounds;
#   - TRAINED_PLY (e.g. a 7000-iteration chair run's point_cloud.ply): the same from that state,
#     TRAINED_ROUNDS rounds (scripts/profile_from_ply.py, which also works for commits without --ply).
# Rounds already in OUT_DIR are kept, so a rerun with more rounds adds to them.
# Both sides run from clean worktrees (never the edited tree) with this checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1; OUT=$(realpath -m "$2"); PLY=${3:-}
ROOT=$PWD; DATA=${TRSPLAT_DATA:-$ROOT/../shared/data}
mkdir -p "$OUT"
for side in old:"$OLD" new:HEAD; do
  name=${side%%:*}; rev=${side#*:}
  [ -d "$OUT/tree-$name" ] || git worktree add --detach "$OUT/tree-$name" "$rev" >/dev/null
done
run() {  # name, then the command
  local name=$1; shift
  (cd "$OUT/tree-$name" && PYTHONPATH="$OUT/tree-$name/src" "$@")
}
for r in $(seq "${ROUNDS:-3}"); do
  for name in old new; do
    f=$OUT/random.$name.$r.json; [ -f "$f" ] && continue
    run $name "$ROOT/.venv/bin/python" -m trsplat bench iteration --data "$DATA/nerf_synthetic_chair" --downscale 4 \
        --n-random-init 100000 --optimizers adam,tr --out "$f" > "${f%.json}.log" 2>&1
  done
done
if [ -n "$PLY" ]; then
  for r in $(seq "${TRAINED_ROUNDS:-2}"); do
    for name in old new; do
      for opt in adam tr; do
        f=$OUT/trained.$name.$opt.$r.json; [ -f "$f" ] && continue
        run $name "$ROOT/.venv/bin/python" "$ROOT/scripts/profile_from_ply.py" $opt "$(realpath "$PLY")" "$f" \
            "$DATA/nerf_synthetic_chair" > "${f%.json}.log" 2>&1
      done
    done
  done
fi
"$ROOT/.venv/bin/python" "$ROOT/scripts/iteration_ab_table.py" "$OUT" | tee "$OUT/summary.md"
