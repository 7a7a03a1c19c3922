"""Print a markdown table of every trsplat run folder under a directory (metrics.json files).

Usage: python scripts/summarize_runs.py benchmarks/runs [--iterations 1000,2000,4000]
One row per (run, eval iteration): PSNR, SSIM, LPIPS (3DGS convention), train seconds, seconds
per iteration, peak RSS, and for trust-region runs the share of steps on the bound per parameter.

With ``--compare 1000,2000,4000``: one row per run instead, PSNR at those iterations and SSIM,
LPIPS, s/it and the on-bound shares at the last of them (runs without all of them are left out).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SHORT = {"means": "pos", "log_scales": "scale", "quats": "rot", "opacity_logits": "opac", "sh_dc": "dc",
         "sh_rest": "rest"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root", type=Path)
    parser.add_argument("--iterations", default=None, help="only these eval iterations (comma-separated)")
    parser.add_argument("--compare", default=None, help="one row per run: PSNR at these iterations")
    args = parser.parse_args()
    if args.compare:
        compare(args.root, [int(x) for x in args.compare.split(",")])
        return
    keep = {int(x) for x in args.iterations.split(",")} if args.iterations else None
    print("| run | N | iter | PSNR | SSIM | LPIPS | LPIPS (corr.) | train s | s/it | peak RSS GB | on bound (pos/scale/rot/opac/dc/rest) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for metrics_path in sorted(args.root.glob("**/metrics.json")):
        data = json.loads(metrics_path.read_text())
        name = str(metrics_path.parent.relative_to(args.root))
        peak = 0  # over the run so far (runs resumed before trsplat kept the peak across resumes)
        for e in data["evals"]:
            peak = max(peak, e["peak_rss_bytes"])
            if keep and e["iteration"] not in keep:
                continue
            bound = e.get("on_bound_fraction")
            bound_txt = "/".join(f"{bound[k]:.2f}" for k in SHORT if k in bound) if bound else "-"
            print(f"| {name} | {data['n_gaussians']} | {e['iteration']} | {e['psnr']:.2f} | {e['ssim']:.4f} "
                  f"| {e.get('lpips', float('nan')):.4f} | {e.get('lpips_corrected', float('nan')):.4f} "
                  f"| {e['train_seconds']:.0f} | {e['seconds_per_iteration']:.3f} "
                  f"| {peak / 2**30:.2f} | {bound_txt} |")


def compare(root: Path, iterations: list[int]) -> None:
    last = iterations[-1]
    head = " | ".join(f"PSNR@{i}" for i in iterations)
    print(f"| run | {head} | SSIM@{last} | LPIPS@{last} | s/it | on bound @{last} (pos/scale/opac/dc) |")
    print("|---|" + "---|" * (len(iterations) + 4))
    for metrics_path in sorted(root.glob("**/metrics.json")):
        evals = {e["iteration"]: e for e in json.loads(metrics_path.read_text())["evals"]}
        if not all(i in evals for i in iterations):
            continue
        e = evals[last]
        bound = e.get("on_bound_fraction")
        bound_txt = "/".join(f"{bound[k]:.2f}" for k in ("means", "log_scales", "opacity_logits", "sh_dc")) if bound else "-"
        psnrs = " | ".join(f"{evals[i]['psnr']:.2f}" for i in iterations)
        print(f"| {metrics_path.parent.relative_to(root)} | {psnrs} | {e['ssim']:.4f} | {e['lpips']:.4f} "
              f"| {e['train_seconds'] / last:.3f} | {bound_txt} |")


if __name__ == "__main__":
    main()
