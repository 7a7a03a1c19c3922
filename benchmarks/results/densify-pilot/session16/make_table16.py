"""Session 16's densify runs (issue 23, docs/densification.md "Session 16: why tr loses with
densification").

``collect STUDY DEST``: copy each run's ``config.json``, ``metrics.json`` and ``curves.json`` from a
``trsplat bench optimizers`` study folder to ``DEST/runs/<scene>/<variant>/seed<k>/`` and add
``final_opacity.json``: count, dead (opacity <= 0.005), alive (>= 1/255), the 50/90/99 % quantiles
and the maximum of the opacities, and how many exceed 0.5, read from the run's ``point_cloud.ply``
(or, for a run that stopped, its last ``checkpoint.pt``); neither of those is committed.

``table DEST...``: one Markdown table over the runs of every DEST: the evaluations, the final count,
the dead share, the opacity quantiles and maximum, s/it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

DEAD_OPACITY = 0.005     # 3DGS-MCMC's dead threshold (--prune-opacity)
ALPHA_MIN = 1.0 / 255.0  # the compositing threshold (Gaussians.count_alive)


def collect(study: Path, dest: Path) -> None:
    import torch

    from trsplat.gaussians import load_ply

    for metrics in sorted(study.glob("runs/*/*/seed*/metrics.json")):
        run = metrics.parent
        out = dest / run.relative_to(study)
        out.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "metrics.json", "curves.json"):
            if (run / name).is_file():
                shutil.copyfile(run / name, out / name)
        if (run / "point_cloud.ply").is_file():
            opacity = load_ply(run / "point_cloud.ply").opacities.detach().flatten()
            record = {"source": "point_cloud.ply"}
        elif (run / "checkpoint.pt").is_file():  # a run that stopped: its last checkpoint
            ckpt = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
            opacity = torch.sigmoid(ckpt["params"]["opacity_logits"].detach()).flatten()
            record = {"source": f"checkpoint.pt, iteration {ckpt['iteration']}"}
        else:
            continue
        q = torch.quantile(opacity.double(), torch.tensor([0.5, 0.9, 0.99], dtype=torch.float64))
        record.update(n_gaussians=int(opacity.numel()), dead=int((opacity <= DEAD_OPACITY).sum()),
                      alive=int((opacity >= ALPHA_MIN).sum()), q50=float(q[0]), q90=float(q[1]),
                      q99=float(q[2]), max=float(opacity.max()), above_half=int((opacity > 0.5).sum()))
        (out / "final_opacity.json").write_text(json.dumps(record, indent=1) + "\n")


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
    if len(sys.argv) == 4 and sys.argv[1] == "collect":
        collect(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) >= 3 and sys.argv[1] == "table":
        table([Path(a) for a in sys.argv[2:]])
    else:
        sys.exit(__doc__)
