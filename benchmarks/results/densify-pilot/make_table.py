"""The densify pilot's tables (issue 23, docs/densification.md "Pilot (session 15)").

``collect STUDY DEST``: copy each run's ``config.json``, ``metrics.json`` and ``curves.json`` from a
``trsplat bench optimizers`` study folder to ``DEST/runs/<scene>/<variant>/seed<k>/`` and add
``final_opacity.json`` (count, dead = opacity <= 0.005, alive = opacity >= 1/255; since session 16
also the 50/90/99 % quantiles, the maximum and the count above 0.5) read from the run's
``point_cloud.ply`` (or, for a run that stopped, its last ``checkpoint.pt``); neither is committed.

``table DEST``: print the Markdown tables: per run, the evaluations, the final and peak Gaussian
count, the dead share and s/it; per (scene, strategy), tr minus adam at the end and the iteration
at which tr first reaches adam's final PSNR (linear between evaluations).
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


def _load(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    curves = run / "curves.json"
    counts = json.loads(curves.read_text())["steps"]["n_gaussians"] if curves.is_file() else []
    op = run / "final_opacity.json"
    return {"metrics": m, "peak": max(counts) if counts else None,
            "opacity": json.loads(op.read_text()) if op.is_file() else None}


def _fmt(e: dict) -> str:
    lpips = f"{e['lpips']:.3f}" if e.get("lpips") is not None else "—"
    return f"{e['psnr']:.2f} / {e['ssim']:.3f} / {lpips}"


def reach(evals: list[dict], target: float) -> float | None:
    """First iteration at which the PSNR curve (linear between evaluations) reaches ``target``."""
    prev = None
    for e in evals:
        if e["psnr"] >= target:
            if prev is None:
                return float(e["iteration"])
            t = (target - prev["psnr"]) / (e["psnr"] - prev["psnr"])
            return prev["iteration"] + t * (e["iteration"] - prev["iteration"])
        prev = e
    return None


def table(dest: Path) -> None:
    runs = {tuple(p.relative_to(dest / "runs").parts[:3]): _load(p)
            for p in sorted(p.parent for p in dest.glob("runs/*/*/seed*/metrics.json"))}
    print("| scene | variant | PSNR / SSIM / LPIPS at each eval | Gaussians end (peak) | dead ≤ 0.005 | alive ≥ 1/255 | s/it |")
    print("|---|---|---|---|---|---|---|")
    for (scene, variant, seed), r in runs.items():
        m = r["metrics"]
        evals = " · ".join(f"{e['iteration']}: {_fmt(e)}" for e in m["evals"])
        op = r["opacity"]
        dead = f"{op['dead'] / op['n_gaussians']:.1%}" if op else "—"
        alive = f"{op['alive'] / op['n_gaussians']:.1%}" if op else "—"
        peak = f" ({r['peak']})" if r["peak"] else ""
        last = m["evals"][-1]
        print(f"| {scene} | {variant} ({seed}) | {evals} | {m['n_gaussians']}{peak} | {dead} | {alive} "
              f"| {last['seconds_per_iteration']:.3f} |")
    print()
    print("| scene | strategy | adam PSNR / SSIM / LPIPS | tr PSNR / SSIM / LPIPS | Δ (tr − adam) | tr reaches adam's final PSNR at |")
    print("|---|---|---|---|---|---|")
    for (scene, variant, seed), a in runs.items():
        if not variant.startswith("adam+"):
            continue
        strategy = variant.split("+", 1)[1]
        t = runs.get((scene, f"tr+{strategy}", seed))
        if t is None:
            continue
        ea, et = a["metrics"]["evals"][-1], t["metrics"]["evals"][-1]
        it = reach(t["metrics"]["evals"], ea["psnr"])
        at = f"{it:.0f} ({it / ea['iteration']:.2f} T)" if it is not None else "not reached"
        dl = (f"{et['lpips'] - ea['lpips']:+.3f}" if et.get("lpips") is not None and ea.get("lpips") is not None
              else "—")
        print(f"| {scene} | {strategy} ({seed}) | {_fmt(ea)} | {_fmt(et)} "
              f"| {et['psnr'] - ea['psnr']:+.2f} dB / {et['ssim'] - ea['ssim']:+.3f} / {dl} | {at} |")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "collect":
        collect(Path(sys.argv[2]), Path(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "table":
        table(Path(sys.argv[2]))
    else:
        sys.exit(__doc__)
