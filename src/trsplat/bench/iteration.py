"""``trsplat bench iteration``: seconds per training iteration, where they go, and peak memory.

For each optimizer it builds an ordinary :class:`trsplat.training.Trainer` on a real capture (the
same data loading, initialisation, loss and optimizer as ``trsplat train``), runs ``warmup``
training steps and then ``iters`` timed steps under cProfile, in a fresh Python process so that
``peak_rss_bytes`` (VmHWM) belongs to that optimizer alone. Steps start at ``start_iteration``
(default 3000: SH degree 3, the steady-state cost) and ``iters`` should be a multiple of the
curvature interval (10) so that ``tr`` pays its curvature refreshes in the proportion it does
in training. ``--ply`` starts from the Gaussians of a 3DGS PLY (e.g. a trained run's
``point_cloud.ply``: anisotropic, opaque splats) instead of the capture's initialisation.
``--densify adc|mcmc`` trains with that strategy, its schedule scaled by ``--densify-steps-scale``
(default 7000/30000, the densify study's, so that iteration 3000 lies inside the refinement
window) and, for ``mcmc``, ``--cap-max`` equal to the initial count (relocation and noise, no
growth): the strategy's cost at an equal number of Gaussians. An ``--optimizers`` entry
``recipe:NAME`` profiles the options of ``trsplat train --recipe NAME`` instead (its densification
included, with the same ``--cap-max`` rule), e.g. ``recipe:tr-mcmc``, the default recipe.

The breakdown is wall time per iteration. Top level, as called by ``Trainer.train_step``:
``render_s``, ``loss_s`` (L1 + D-SSIM), ``backward_s`` (of the training loss),
``densify_s`` (the strategy's ``step_post_backward``: statistics, noise, regularisers and the
refinements that fall into the timed steps), ``optimizer_step_s`` (for ``tr`` it includes
``curvature_s``, the JVP render + backward of the Hutchinson/GNB estimate, and for both
trust-region optimizers ``trust_region_s``, the Hellinger radii and clip) and ``other_s`` (view
sampling, PSNR bookkeeping, ``zero_grad``). Kernel level, summed over every render of the
iteration (the curvature's included): ``project_forward_s``, ``binning_s``,
``composite_forward_s``, ``composite_backward_s``, ``project_backward_s``.

The per-optimizer ratios ``s_per_it / adam`` and ``peak_rss / adam`` are the budgets of issue 5.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from trsplat.bench.datasets import DATA_ENV, default_capture
from trsplat.config import RECIPES
from trsplat.machine import command_line, machine_info
from trsplat.bench.render_bench import _rss
from trsplat.errors import TrsplatError
from trsplat.process_tuning import tune_process
from trsplat.io_utils import write_json

# top-level parts: (file fragment, function name), counted only where train_step calls them
TOP_PARTS = {
    "render_s": ("trsplat/render/__init__", "render"),
    "loss_s": ("trsplat/loss", "training_loss"),
    "backward_s": ("torch/_tensor", "backward"),
    "densify_s": ("trsplat/strategy/", "step_post_backward"),
    "optimizer_step_s": ("torch/optim/optimizer", "wrapper"),  # every torch optimizer's step goes through it
}
# nested parts: cumulative over the whole iteration
INNER_PARTS = {
    "curvature_s": ("trsplat/optim/curvature", "estimate"),
    "trust_region_s": ("trsplat/optim/hellinger", "clip_step"),
    # (the VJP and JVP kernels of the projection are torch Functions named "forward" in the same
    # file: only the line of the primal's forward counts)
    "project_forward_s": ("render/cpu_project", "forward", "trsplat.render.cpu_project:_ProjectCPU.forward"),
    "binning_s": ("render/tiles", "bin_splats"),
    "composite_forward_s": ("render/composite_autograd", "composite_native"),
    "composite_backward_s": ("render/composite_autograd", "backward"),
    "project_backward_s": ("render/cpu_project", "backward"),
}
PARTS = {**TOP_PARTS, **INNER_PARTS}
STUDY_STEPS_SCALE = 7000 / 30000
"""``--densify-steps-scale`` default: the densify study's 7000-iteration schedule."""


def profile_training(data: str, optimizer: str, *, downscale: int = 4, n_random_init: int = 100_000,
                     iters: int = 20, warmup: int = 3, start_iteration: int = 3000,
                     backend: str = "auto", seed: int = 0, ply: str | None = None, densify: str = "none",
                     densify_steps_scale: float = STUDY_STEPS_SCALE, cap_max: int | None = None,
                     recipe: str | None = None) -> dict[str, Any]:
    """Profile ``iters`` training steps of ``optimizer`` in this process; seconds per iteration.
    ``ply``: start from the Gaussians of this PLY instead of the capture's initialisation;
    ``densify``: the strategy (``cap_max``, for mcmc: default the initial count); ``recipe``: the
    options of that ``trsplat train --recipe`` (its optimizer and strategy replace ``optimizer``
    and ``densify``)."""
    import torch

    from trsplat.config import TrainConfig
    from trsplat.gaussians import load_ply
    from trsplat.training import Trainer, load_training_scene, prepare

    with tempfile.TemporaryDirectory() as out:
        options = dict(data=data, out=out, optimizer=optimizer, downscale=downscale, n_random_init=n_random_init,
                       backend=backend, seed=seed, iters=start_iteration + warmup + iters, eval_at=[],
                       densify=densify, densify_steps_scale=densify_steps_scale)
        if recipe is not None:
            options.update(RECIPES[recipe])
            optimizer, densify = options["optimizer"], options["densify"]
        cfg = TrainConfig.make(**options)
        cfg.validate()
        torch.manual_seed(seed)
        if ply is None:
            scene, gaussians = prepare(cfg)
        else:
            scene, gaussians = load_training_scene(cfg), load_ply(ply)
        if densify != "none":
            cfg.strategy.cap_max = cap_max or len(gaussians)  # mcmc's budget (adc ignores it)
            cfg.validate()
        trainer = Trainer(cfg, scene, gaussians)
        rss_loaded = _rss("VmRSS")
        it = start_iteration
        for _ in range(warmup):
            trainer.train_step(it)
            it += 1
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(iters):
            trainer.train_step(it)
            it += 1
        prof.disable()
        wall = (time.perf_counter() - t0) / iters
    stats = pstats.Stats(prof).stats

    def cum(file_part: str, name: str, function: str | None = None, caller: tuple[str, str] | None = None) -> float:
        line = _first_line(function) if function is not None else None
        total = 0.0
        for (file, first_line, func), (_, _, _, ct, callers) in stats.items():
            if file_part not in file or func != name or line not in (None, first_line):
                continue
            if caller is None:
                total += ct
            else:
                total += sum(c[3] for (cf, _, cn), c in callers.items() if caller[0] in cf and cn == caller[1])
        return total / iters

    out: dict[str, Any] = {"optimizer": optimizer, "recipe": recipe, "densify": densify, "backend": trainer.backend,
                           "n_gaussians": len(gaussians), "width": scene.train[0].camera.width,
                           "height": scene.train[0].camera.height, "iters": iters,
                           "start_iteration": start_iteration, "s_per_it": wall}
    step_fn = ("trsplat/training/trainer", "train_step")
    out.update({key: cum(*where, caller=step_fn) for key, where in TOP_PARTS.items()})
    out.update({key: cum(*where) for key, where in INNER_PARTS.items()})
    out["other_s"] = wall - sum(out[k] for k in TOP_PARTS)
    out["rss_after_load_bytes"] = rss_loaded
    out["peak_rss_bytes"] = _rss("VmHWM")
    return out


def _first_line(function: str) -> int:
    """First line of ``"module:Class.function"``'s code, as cProfile keys it."""
    module, path = function.split(":")
    obj: Any = importlib.import_module(module)
    for attr in path.split("."):
        obj = getattr(obj, attr)
    return obj.__code__.co_firstlineno


def _run_isolated(task: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "trsplat.bench.iteration", "--worker", json.dumps(task)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise TrsplatError(f"profiling {_label(task)} failed:\n{(proc.stderr or proc.stdout)[-2000:]}")
    return json.loads(lines[-1])


def _label(row: dict[str, Any]) -> str:
    """``recipe:NAME``, or the optimizer with ``+strategy`` when it densifies."""
    if row.get("recipe"):
        return f"recipe:{row['recipe']}"
    return row["optimizer"] + (f"+{row['densify']}" if row.get("densify", "none") != "none" else "")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one column per optimizer, one row per part (ms per iteration), then ratios."""
    names = [_label(r) for r in rows]
    head = "| ms per iteration | " + " | ".join(names) + " |"
    lines = [head, "|---|" + "---|" * len(rows)]
    keys = ["s_per_it", *PARTS, "other_s"]
    for k in keys:
        label = "whole iteration" if k == "s_per_it" else k.removesuffix("_s").replace("_", " ")
        if k in INNER_PARTS:
            label = "↳ " + label
        lines.append(f"| {label} | " + " | ".join(f"{1000 * r[k]:.1f}" for r in rows) + " |")
    lines.append("| peak RSS (MiB) | " + " | ".join(f"{r['peak_rss_bytes'] / 2**20:.0f}" for r in rows) + " |")
    base = next((r for r in rows if _label(r) == "adam"), None)
    if base:
        lines.append("| time / adam | " + " | ".join(f"{r['s_per_it'] / base['s_per_it']:.2f}" for r in rows) + " |")
        lines.append("| peak RSS / adam | " + " | ".join(
            f"{r['peak_rss_bytes'] / base['peak_rss_bytes']:.2f}" for r in rows) + " |")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default=None, help=f"capture folder (default: ${DATA_ENV}/{default_capture().name})")
    parser.add_argument("--downscale", type=int, default=4)
    parser.add_argument("--n-random-init", type=int, default=100_000,
                        help="Gaussians of the random initialisation (captures without SfM points)")
    parser.add_argument("--optimizers", default="adam,adam-tr,tr",
                        help="comma-separated optimizers or recipe:NAME for the options of trsplat train --recipe "
                             "NAME, e.g. adam,tr,recipe:tr-mcmc (default: adam,adam-tr,tr)")
    parser.add_argument("--iters", type=int, default=20, help="timed iterations (default 20)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--start-iteration", type=int, default=3000)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--ply", default=None, help="start from the Gaussians of this 3DGS PLY (e.g. a trained "
                        "run's point_cloud.ply) instead of the capture's initialisation")
    parser.add_argument("--densify", default="none", choices=("none", "adc", "mcmc"),
                        help="train with this densification strategy (default none)")
    parser.add_argument("--densify-steps-scale", type=float, default=STUDY_STEPS_SCALE,
                        help="factor on the strategy's iteration options (default 7000/30000: the densify study's)")
    parser.add_argument("--cap-max", type=int, default=None,
                        help="mcmc: maximum number of Gaussians (default: the initial count, i.e. no growth)")
    parser.add_argument("--out", default="iteration_bench.json", help="JSON file to write")


def main(args: argparse.Namespace) -> int:
    data = args.data or str(default_capture())
    if not Path(data).is_dir():
        raise TrsplatError(f"{data}: no such capture folder (pass --data, or set {DATA_ENV} to the datasets folder)")
    if args.ply is not None and not Path(args.ply).is_file():
        raise TrsplatError(f"{args.ply}: no such PLY file")
    entries = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    unknown = [o for o in entries if o.startswith("recipe:") and o.removeprefix("recipe:") not in RECIPES]
    if unknown:
        raise TrsplatError(f"--optimizers {unknown[0]}: unknown recipe; choose {', '.join(RECIPES)}")
    rows = []
    for opt in entries:
        recipe = opt.removeprefix("recipe:") if opt.startswith("recipe:") else None
        task = {"data": data, "optimizer": "adam" if recipe else opt, "recipe": recipe, "downscale": args.downscale,
                "n_random_init": args.n_random_init, "iters": args.iters, "warmup": args.warmup,
                "start_iteration": args.start_iteration, "backend": args.backend, "ply": args.ply,
                "densify": args.densify, "densify_steps_scale": args.densify_steps_scale, "cap_max": args.cap_max}
        print(f"profiling {opt} ...", flush=True)
        rows.append(_run_isolated(task))
    table = format_table(rows)
    command = command_line()
    write_json(args.out, {"machine": machine_info(), "command": command, "rows": rows})
    print(table)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        tune_process()  # malloc; the environment (read at torch's import) comes from the parent command
        task = json.loads(sys.argv[2])
        print(json.dumps(profile_training(task.pop("data"), task.pop("optimizer"), **task)))
        sys.exit(0)
    _p = argparse.ArgumentParser(prog="python -m trsplat.bench.iteration")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
