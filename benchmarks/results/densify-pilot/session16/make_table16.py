"""Session 16's densify runs (issue 23, docs/densification.md "Session 16: why tr loses with
densification").

Collect the runs with the pilot's script: ``python ../make_table.py collect STUDY DEST``.

``table DEST...``: one Markdown table over the runs of every DEST: the evaluations, the final count,
the dead share, the opacity quantiles and maximum, s/it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(dests: list[Path]) -> None:
    print("| variant | PSNR / SSIM / LPIPS at 375 · 750 · 1125 · 1500 | Gaussians end | dead ≤ 0.005 "
          "| opacity q50 / q99 / max | s/it |")
    print("|---|---|---|---|---|---|")
    for dest in dests:
        for run in sorted(p.parent for p in dest.glob("runs/*/*/seed*/metrics.json")):
            m = json.loads((run / "metrics.json").read_text())
            evals = " · ".join(f"{e['psnr']:.2f} / {e['ssim']:.3f} / {e['lpips']:.3f}" for e in m["evals"])
            op_file = run / "final_opacity.json"
            op = json.loads(op_file.read_text()) if op_file.is_file() else None
            dead = f"{op['dead'] / op['n_gaussians']:.1%}" if op else "—"
            quant = f"{op['q50']:.3f} / {op['q99']:.3f} / {op['max']:.3f}" if op and "q50" in op else "—"
            variant = run.parent.name
            print(f"| {variant} | {evals} | {m['n_gaussians']} | {dead} | {quant} "
                  f"| {m['evals'][-1]['seconds_per_iteration']:.3f} |")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "table":
        table([Path(a) for a in sys.argv[2:]])
    else:
        sys.exit(__doc__)
