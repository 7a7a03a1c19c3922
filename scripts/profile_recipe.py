"""Profile a recipe's training steps (chair, --downscale 4) with the trsplat on PYTHONPATH.

usage: python scripts/profile_recipe.py RECIPE OUT.json [PLY]   (RECIPE with MCMC, e.g. tr-mcmc, 3dgs-mcmc)

``trsplat bench iteration --optimizers recipe:NAME`` does this for current code; this script also
runs commits older than that option that have recipes (session 20 on: it injects the recipe's
options into ``TrainConfig.make``), so that an old and a new commit can be compared on the same
recipe (docs/cpu_performance.md, "Session 23"). MCMC is capped at the initial count.
"""
import json
import sys

from trsplat.process_tuning import tune_process

tune_process()  # as the trsplat command does: before torch is imported

import trsplat.config as C  # noqa: E402
import trsplat.data.scene as scene_module  # noqa: E402
from trsplat.bench.iteration import profile_training  # noqa: E402
from trsplat.gaussians import load_ply  # noqa: E402

recipe, out = sys.argv[1], sys.argv[2]
DATA = "../shared/data/nerf_synthetic_chair"
ply = sys.argv[3] if len(sys.argv) > 3 else None
make = C.TrainConfig.make.__func__
C.TrainConfig.make = classmethod(lambda cls, **kw: make(cls, **{**kw, **C.RECIPES[recipe]}))
if ply:
    scene_module.init_gaussians = lambda *a, **k: load_ply(ply)
row = profile_training(DATA, C.RECIPES[recipe]["optimizer"], downscale=4,
                       n_random_init=100000 if not ply else 1000, iters=20, densify="mcmc")
json.dump(row, open(out, "w"), indent=1)
print(recipe, round(1000 * row["s_per_it"]), "ms", round(row["peak_rss_bytes"] / 2**20), "MiB", row["n_gaussians"])
