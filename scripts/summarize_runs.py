"""Print a markdown table of every trsplat run folder under a directory (metrics.json files).

Usage: python scripts/summarize_runs.py benchmarks/runs [--iterations 1000,2000,4000]
One row per (run, eval iteration): PSNR, SSIM, LPIPS (3DGS convention), train seconds, seconds
per iteration, peak RSS, and for trust-region runs the share of steps on the bound per parameter.
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
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
