"""``trsplat bench distributed``: what data-parallel training buys on this machine.

Two parts, each a set of ordinary ``trsplat train`` runs (``torchrun`` for several processes,
one thread per process) whose run folders stay under ``--out`` (finished runs are reused and
interrupted ones resumed, so the benchmark can be stopped and started again):

- ``throughput``: seconds per iteration and views per second of ``--batch-views B`` (default 2)
  in 1 and in ``--nproc`` processes, from the per-step train seconds of ``curves.json`` (median
  after ``--warmup`` steps), repeated ``--rounds`` times, alternating;
- ``quality``: test PSNR against the views seen and against train seconds for B = 1, 2, 4 at an
  equal number of views (``--views``; B views per step over min(B, ``--nproc``) processes), per
  optimizer, so that a user sees what batching costs in quality.

Writes ``distributed.json``, ``distributed.md`` and ``quality.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from trsplat.bench.datasets import DATA_ENV, datasets_root
from trsplat.errors import TrsplatError
from trsplat.io_utils import atomic_write, ensure_dir, write_json
from trsplat.machine import command_line, machine_info
from trsplat.training.plots import read_steps
from trsplat.training.rundir import RunDir

ONE_THREAD = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def train_command(nproc: int, args: list[str]) -> list[str]:
    """``trsplat train ARGS`` in ``nproc`` processes (torchrun for more than one)."""
    if nproc == 1:
        return [sys.executable, "-m", "trsplat", "train", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "trsplat", "train", *args]


def run_training(run: Path, nproc: int, options: list[str], log: Path) -> dict[str, Any]:
    """Train (or resume, or reuse) the run in ``run``; returns its ``metrics.json``."""
    run_dir = RunDir(run)
    metrics = run_dir.read_metrics() or {}
    if metrics.get("finished"):
        return metrics
    # a new run starts from TrainConfig's own defaults (--recipe none), whatever train's default recipe
    args = ["--resume", str(run)] if run_dir.has_checkpoint() else [*options, "--recipe", "none", "--out", str(run)]
    with open(log, "a") as handle:
        proc = subprocess.run(train_command(nproc, args), env={**os.environ, **ONE_THREAD},
                              stdout=handle, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise TrsplatError(f"{run}: training failed (exit {proc.returncode}); see {log}")
    return run_dir.read_metrics()


def step_seconds(run: Path, warmup: int) -> float:
    """Median seconds per step after ``warmup`` steps (from ``curves.json``)."""
    seconds = read_steps(RunDir(run))["train_seconds"]
    durations = [b - a for a, b in zip(seconds[warmup:], seconds[warmup + 1:])]
    if not durations:
        raise TrsplatError(f"{run}: too few steps to time (raise --iters above --warmup)")
    return statistics.median(durations)


def throughput(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    rows = []
    for optimizer in args.optimizers:
        for round_ in range(args.rounds):
            for nproc in (1, args.nproc):
                run = out / "throughput" / f"{optimizer}-np{nproc}-r{round_}"
                options = [args.data, "--downscale", str(args.downscale), "--optimizer", optimizer,
                           "--batch-views", str(args.batch_views), "--iters", str(args.iters),
                           "--no-lpips", "--n-saved-renders", "0", "--max-test-views", "1"]
                if args.n_random_init:
                    options += ["--n-random-init", str(args.n_random_init)]
                run_training(run, nproc, options, out / "throughput.log")
                s = step_seconds(run, args.warmup)
                rows.append({"optimizer": optimizer, "nproc": nproc, "round": round_, "batch_views": args.batch_views,
                             "s_per_it": s, "views_per_s": args.batch_views / s})
                print(f"{optimizer} {nproc} process(es), B={args.batch_views}: {s:.3f} s/it, "
                      f"{args.batch_views / s:.2f} views/s", flush=True)
    return rows


def quality(args: argparse.Namespace, out: Path) -> list[dict[str, Any]]:
    rows = []
    for optimizer in args.optimizers:
        for batch in args.batches:
            iters = args.views // batch
            nproc = min(batch, args.nproc)
            run = out / "quality" / f"{optimizer}-b{batch}"
            eval_at = sorted({max(1, iters * k // args.evals) for k in range(1, args.evals + 1)})
            options = [args.quality_data, "--downscale", str(args.quality_downscale), "--optimizer", optimizer,
                       "--batch-views", str(batch), "--iters", str(iters), "--eval-at", ",".join(map(str, eval_at)),
                       "--no-lpips", "--seed", str(args.seed)]
            metrics = run_training(run, nproc, options, out / "quality.log")
            last = metrics["evals"][-1]
            rows.append({"optimizer": optimizer, "batch_views": batch, "nproc": nproc, "iters": iters,
                         "views": iters * batch, "psnr": last["psnr"], "ssim": last["ssim"],
                         "train_seconds": last["train_seconds"], "run": str(run.relative_to(out)),
                         "curve": [(e["iteration"] * batch, e["train_seconds"], e["psnr"]) for e in metrics["evals"]]})
            print(f"{optimizer} B={batch} ({nproc} process(es), {iters} steps): {last['psnr']:.2f} dB, "
                  f"{last['train_seconds']:.0f} s", flush=True)
    return rows


def report(result: dict[str, Any]) -> str:
    lines = [f"Command: `{result['command']}`", f"Machine: {result['machine'].get('cpu_model', '')}, one thread per process", ""]
    if result.get("throughput"):
        lines += ["| optimizer | processes | B | s/it (median over rounds) | views/s | views/s vs 1 process |",
                  "|---|---|---|---|---|---|"]
        by = {}
        for r in result["throughput"]:
            by.setdefault((r["optimizer"], r["nproc"]), []).append(r["s_per_it"])
        for (optimizer, nproc), seconds in by.items():
            s = statistics.median(seconds)
            one = statistics.median(by[(optimizer, 1)])
            b = result["throughput"][0]["batch_views"]
            lines.append(f"| {optimizer} | {nproc} | {b} | {s:.3f} | {b / s:.2f} | {one / s:.2f}x |")
        lines.append("")
    if result.get("quality"):
        lines += ["| optimizer | B | processes | steps | views | test PSNR | SSIM | train s | ΔPSNR vs B=1 |",
                  "|---|---|---|---|---|---|---|---|---|"]
        base = {r["optimizer"]: r["psnr"] for r in result["quality"] if r["batch_views"] == 1}
        for r in result["quality"]:
            delta = r["psnr"] - base[r["optimizer"]] if r["optimizer"] in base else float("nan")
            lines.append(f"| {r['optimizer']} | {r['batch_views']} | {r['nproc']} | {r['iters']} | {r['views']} | "
                         f"{r['psnr']:.2f} | {r['ssim']:.4f} | {r['train_seconds']:.0f} | {delta:+.2f} |")
    return "\n".join(lines) + "\n"


def plot_quality(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r in rows:
        views, seconds, psnr = zip(*r["curve"])
        label = f"{r['optimizer']} B={r['batch_views']} ({r['nproc']} proc)"
        axes[0].plot(views, psnr, marker="o", label=label)
        axes[1].plot(seconds, psnr, marker="o", label=label)
    axes[0].set_xlabel("views seen")
    axes[1].set_xlabel("train seconds (rank 0)")
    for ax in axes:
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    root = datasets_root()
    default = lambda name: str(root / name) if root else None  # noqa: E731
    parser.add_argument("--out", default="benchmarks/results/distributed", help="folder of the runs and the report")
    parser.add_argument("--parts", default="throughput,quality", help="throughput, quality or both (comma-separated)")
    parser.add_argument("--optimizers", default="adam,tr", type=lambda t: [o for o in t.split(",") if o])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel runs")
    parser.add_argument("--data", default=default("nerf_synthetic_chair"), help="throughput: capture folder")
    parser.add_argument("--downscale", type=int, default=4)
    parser.add_argument("--n-random-init", type=int, default=100_000)
    parser.add_argument("--batch-views", type=int, default=2, help="throughput: views per step")
    parser.add_argument("--iters", type=int, default=40, help="throughput: steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="throughput: steps not timed")
    parser.add_argument("--rounds", type=int, default=2, help="throughput: repetitions, alternating 1 and N processes")
    parser.add_argument("--quality-data", default=default("colmap_bird"), help="quality: capture folder")
    parser.add_argument("--quality-downscale", type=int, default=4)
    parser.add_argument("--views", type=int, default=7000, help="quality: training views per run (B x steps)")
    parser.add_argument("--batches", default="1,2,4", type=lambda t: [int(b) for b in t.split(",") if b])
    parser.add_argument("--evals", type=int, default=7, help="quality: evaluations per run")
    parser.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> int:
    parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if not parts <= {"throughput", "quality"}:
        raise TrsplatError(f"--parts {args.parts}: choose throughput, quality or both")
    for part, data in (("throughput", args.data), ("quality", args.quality_data)):
        if part in parts and (data is None or not Path(data).is_dir()):
            raise TrsplatError(f"{data}: no such capture folder (pass the option, or set {DATA_ENV})")
    out = Path(args.out)
    ensure_dir(out)
    path = out / "distributed.json"
    result = json.loads(path.read_text()) if path.is_file() else {}
    result.update(machine=machine_info(), command=command_line())
    if "throughput" in parts:
        result["throughput"] = throughput(args, out)
        write_json(path, result)
    if "quality" in parts:
        result["quality"] = quality(args, out)
        write_json(path, result)
        plot_quality(result["quality"], out / "quality.png")
    text = report(result)
    with atomic_write(out / "distributed.md") as tmp:
        tmp.write_text(text)
    print(text)
    return 0
