"""How many Gaussians each finished study run ended with alive (opacity ≥ 1/255).

A Gaussian below the compositing threshold gets no gradient and, without densification, never
comes back, so the alive count is the capacity a run has left. New runs record it at every eval
(``n_alive`` in ``metrics.json``); this reads it from the final ``point_cloud.ply`` of runs made
before that, which exist only on the machine that trained them.

Usage: python scripts/alive_gaussians.py benchmarks/results/study-7k
"""

from __future__ import annotations

import sys
from pathlib import Path

from trsplat.gaussians import load_ply


def main(study: str) -> None:
    plys = sorted(Path(study).glob("runs/*/*/seed*/point_cloud.ply"))
    if not plys:
        sys.exit(f"{study}: no runs/<scene>/<variant>/seed<k>/point_cloud.ply here")
    print("| scene | variant | seed | Gaussians | alive (opacity ≥ 1/255) | alive share |")
    print("|---|---|---|---|---|---|")
    for ply in plys:
        seed_dir = ply.parent
        g = load_ply(ply)
        alive = g.count_alive()
        print(f"| {seed_dir.parent.parent.name} | {seed_dir.parent.name} | {seed_dir.name[4:]} | {len(g)} "
              f"| {alive} | {alive / len(g):.1%} |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
