"""Why does the curvature not pay? ``trsplat bench curvature`` compares a 3DGS²-TR run's curvature
EMA D̂ with a many-view estimate of the Gauss-Newton diagonal at the same parameters, and counts
how many Newton steps −ĝ/D would sit on the trust-region bound for each choice of D.

The state comes from the run folder's ``checkpoint.pt`` (local to the machine that trained it),
or, with ``--at ITER``, from replaying the run's ``config.json`` (committed with study results)
up to iteration ITER with the run's own seed (no evaluations). The reference ``D_ref`` =
E_view[diag(JᵀJ)] is estimated by GNB, (Jᵀu)² with Rademacher u over the residuals (never
negative; unlike Hutchinson, its per-sample noise does not grow with the coupling to other
parameters), averaged over ``--views`` evenly spaced training views × ``--probes`` probes.
Reported per raw parameter tensor:

- ``D̂/D_ref``: median ratio over coordinates where both are positive (1 = the right scale);
  compare with the EMA's bias-correction factor 1 − θ₂^k (k curvature updates), which the paper
  leaves out;
- ``corr(log)``: Pearson correlation of log D̂ and log D_ref over those coordinates;
- ``D̂ ≤ 0``: share of coordinates where the run's D̂ is not positive, so the guard's floor makes
  the Newton step huge; ``Hutch(V) ≤ 0``: the same for a fresh V-view Hutchinson mean;
- ``on bound``: share of the non-zero Newton steps the trust region clips, for D = D̂ (what the
  run does), D̂ / (1 − θ₂^k) (bias correction), D_ref, and D = 0 (``--curvature none``);
- ``overshoot``: median |−ĝ/D_ref| / |clipped step| over the clipped steps. The radii grow like
  √ε, so ε would have to grow by about overshoot² before an accurate diagonal, rather than the
  bound, set most steps.

Command: ``trsplat bench curvature RUN_DIR [--at ITER] [--views 32] [--probes 4] [--out FILE.json]``
(writes FILE.json and FILE.md; default RUN_DIR/curvature_diagnosis.json).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from trsplat.machine import command_line
from trsplat.errors import TrsplatError
from trsplat.io_utils import atomic_write, write_json
from trsplat.optim.curvature import gauss_newton_bartlett, hutchinson
from trsplat.optim.hellinger import TrustRegionConfig, clip_step
from trsplat.optim.tr import guarded_newton_step
from trsplat.training import RunDir, Trainer, make_residual_fn, prepare

Params = dict[str, torch.Tensor]


def on_bound(params: Params, g_hat: Params, d: Params, eps: float, cfg: TrustRegionConfig,
             guard: str, floor: float) -> dict[str, tuple[float, float]]:
    """Per tensor: (share of the non-zero Newton steps −ĝ/D (the run's guard) that the trust region
    clips, median |step| / |clipped step| over the clipped ones; NaN where there are none)."""
    out = {}
    for name, g in g_hat.items():
        step = guarded_newton_step(g, d[name], guard, floor)
        clipped, mask = clip_step(params, {name: step}, eps, cfg)
        moving = step != 0
        reduced = mask[name] & moving & (clipped[name] != 0)
        share = float(mask[name][moving].float().mean()) if moving.any() else float("nan")
        over = float((step[reduced].abs() / clipped[name][reduced].abs()).median()) if reduced.any() else float("nan")
        out[name] = (share, over)
    return out


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(median a/b, Pearson correlation of log a and log b) over coordinates where both are > 0."""
    both = (a > 0) & (b > 0)
    if int(both.sum()) < 2:
        return float("nan"), float("nan")
    la, lb = a[both].double().log(), b[both].double().log()
    return float((la - lb).median().exp()), float(torch.corrcoef(torch.stack([la, lb]))[0, 1])


def load_state(run: Path, at: int | None) -> Trainer:
    """The run's trainer at its checkpoint, or replayed from its config up to iteration ``at``."""
    run_dir = RunDir(run)
    cfg = run_dir.read_config()
    if cfg.optim.optimizer != "tr":
        raise TrsplatError(f"{run}: optimizer {cfg.optim.optimizer!r}; the curvature diagnosis needs a 'tr' run")
    cfg.out = str(run)
    torch.manual_seed(cfg.seed)
    scene, gaussians = prepare(cfg)
    trainer = Trainer(cfg, scene, gaussians)
    if at is None:
        if not run_dir.has_checkpoint():
            raise TrsplatError(f"{run}: no {RunDir.CHECKPOINT} (checkpoints stay on the machine that trained "
                               "the run); use --at ITER to replay the run instead")
        trainer.load_checkpoint(run_dir.load_checkpoint())
        return trainer
    if not 0 < at <= cfg.iters:
        raise TrsplatError(f"--at {at}: choose an iteration in 1..{cfg.iters}")
    for iteration in tqdm(range(1, at + 1), desc=f"replay {run}", unit="it", mininterval=1.0):
        trainer.train_step(iteration)
    trainer.state.iteration = at
    return trainer


def diagnose(trainer: Trainer, *, views: int = 32, probes: int = 4) -> dict[str, Any]:
    """The numbers of the module docstring for ``trainer``'s current state."""
    cfg, opt, it = trainer.cfg, trainer.optimizer, trainer.state.iteration
    group = opt.param_groups[0]  # tr's hyperparameters and ε are the same in every group
    params = {g["name"]: g["params"][0].detach() for g in opt.param_groups}
    state = {g["name"]: opt.state[g["params"][0]] for g in opt.param_groups}
    residual_fn = make_residual_fn(sh_degree=trainer.sh_degree(it), background=trainer.background,
                                   backend=trainer.backend, form=cfg.optim.residual_form,
                                   lambda_dssim=cfg.lambda_dssim, delta=cfg.optim.residual_delta)
    n = len(trainer.scene.train)
    frames = [trainer.scene.train[i * n // views] for i in range(min(views, n))]
    gen = torch.Generator().manual_seed(0)
    d_ref = gauss_newton_bartlett(params, frames, residual_fn, gen, n_probes=probes)
    d_hut = hutchinson(params, frames, residual_fn, gen)
    updates = state[group["name"]]["curvature_updates"]
    bias = 1 - group["theta2"] ** max(updates, 1)
    eps = group["tr_eps"]
    d_ema = {k: s["curv_ema"] for k, s in state.items()}
    g_ema = {k: s["grad_ema"] for k, s in state.items()}
    choices = {"run": d_ema, "bias_corrected": {k: v / bias for k, v in d_ema.items()},
               "reference": d_ref, "none": {k: torch.zeros_like(v) for k, v in d_ema.items()}}
    bounds = {label: on_bound(params, g_ema, d, eps, opt.trust_region.config, group["guard"], group["guard_floor"])
              for label, d in choices.items()}
    tensors = {}
    for name in params:
        ratio, corr = compare(d_ema[name], d_ref[name])
        tensors[name] = {
            "ema_over_reference": ratio, "corr_log_ema_reference": corr,
            "ema_nonpositive": float((d_ema[name] <= 0).float().mean()),
            "hutchinson_nonpositive": float((d_hut[name] <= 0).float().mean()),
            "on_bound": {label: bounds[label][name][0] for label in choices},
            "overshoot_reference": bounds["reference"][name][1]}
    return {"iteration": it, "eps": eps, "curvature": cfg.optim.curvature,
            "curvature_updates": updates, "bias_factor": bias, "views": len(frames),
            "probes": probes, "tensors": tensors}


def format_report(record: dict[str, Any]) -> str:
    """Markdown: what was diagnosed, the command, and one table row per parameter tensor."""
    v = record["views"]
    lines = [f"{record['run']}: iteration {record['iteration']}, ε = {record['eps']:.3g}, curvature "
             f"{record['curvature']}, k = {record['curvature_updates']} curvature updates, bias factor "
             f"1 − θ₂^k = {record['bias_factor']:.3f}; D_ref: GNB over {v} views × {record['probes']} probes.",
             "", f"Command: `{record['command']}`", "",
             f"| tensor | D̂/D_ref | corr(log) | D̂ ≤ 0 | Hutch({v}) ≤ 0 | on bound: D̂ | D̂/(1−θ₂^k) | D_ref "
             "| D = 0 | overshoot (D_ref) |", "|" + "---|" * 10]
    for name, t in record["tensors"].items():
        ob = t["on_bound"]
        lines.append(f"| {name} | {t['ema_over_reference']:.2f} | {t['corr_log_ema_reference']:.2f} "
                     f"| {t['ema_nonpositive']:.1%} | {t['hutchinson_nonpositive']:.1%} | {ob['run']:.1%} "
                     f"| {ob['bias_corrected']:.1%} | {ob['reference']:.1%} | {ob['none']:.1%} "
                     f"| {t['overshoot_reference']:.3g} |")
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="a 'tr' run folder")
    parser.add_argument("--at", type=int, default=None,
                        help="replay the run from its config.json to this iteration (default: use checkpoint.pt)")
    parser.add_argument("--views", type=int, default=32, help="training views for D_ref (default 32)")
    parser.add_argument("--probes", type=int, default=4, help="GNB probes per view for D_ref (default 4)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON to write, and the same name with .md (default RUN/curvature_diagnosis.json)")


def main(args: argparse.Namespace) -> int:
    if args.views < 1 or args.probes < 1:
        raise TrsplatError("--views and --probes must be >= 1")
    record = diagnose(load_state(args.run, args.at), views=args.views, probes=args.probes)
    record["run"] = str(args.run)
    record["command"] = command_line()
    out = args.out or args.run / "curvature_diagnosis.json"
    report = format_report(record)
    write_json(out, record)
    with atomic_write(out.with_suffix(".md")) as tmp:
        tmp.write_text(report)
    print(report + f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0
