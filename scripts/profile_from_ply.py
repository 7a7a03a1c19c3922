"""Profile training steps of the trsplat on PYTHONPATH, starting from a PLY.

usage: python scripts/profile_from_ply.py OPTIMIZER PLY OUT.json [DATA]

``trsplat bench iteration --ply`` does this for current code; this script also works for commits
older than that option (it replaces the capture's initialisation by the PLY's Gaussians), so that
``scripts/iteration_ab.sh`` can time an old and a new commit on the same trained state.
"""

import json
import sys

from trsplat.process_tuning import tune_process

tune_process()  # as the trsplat command does: before torch is imported

import trsplat.data.scene as scene_module  # noqa: E402
from trsplat.bench.iteration import profile_training  # noqa: E402
from trsplat.gaussians import load_ply  # noqa: E402

if __name__ == "__main__":
    optimizer, ply, out = sys.argv[1:4]
    data = sys.argv[4] if len(sys.argv) > 4 else "../shared/data/nerf_synthetic_chair"
    scene_module.init_gaussians = lambda *args, **kwargs: load_ply(ply)
    row = profile_training(data, optimizer, downscale=4, n_random_init=1000, iters=20)
    with open(out, "w") as f:
        json.dump(row, f, indent=1)
    print(f"{optimizer}: {row['n_gaussians']} Gaussians, {1000 * row['s_per_it']:.1f} ms per iteration")
