"""Per-group or global radius factor? Measures the ratio test of each parameter type on its own.

Trains a run of ``trsplat train`` options (``--tr-radius adaptive``) and every ``--every`` steps
measures, for each parameter type k, ρ_k = actual / predicted decrease of the step's view loss
when only k's part of the step is applied (one extra render per type), next to the global ρ
of the whole step. If the per-type ρ_k differ systematically (one type over-promising while the
others hold), one factor per type is worth its cost (six renders per test); if they agree, or
differ only by noise, one global factor suffices. Writes a JSON summary (``docs/optimizer.md``,
"The adaptive radius").

    python scripts/adaptive_rho_by_group.py --out OUT.json --every 20 -- DATA --iters 600 --optimizer tr \\
        --tr-radius adaptive --curvature none --downscale 4 --no-lpips
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch

from trsplat.cli import build_parser, config_from_args
from trsplat.gaussians import Gaussians
from trsplat.loss import training_loss
from trsplat.render import render
from trsplat.training.evaluation import active_sh_degree
from trsplat.training.trainer import Trainer, prepare


def view_loss(trainer: Trainer, params: dict[str, torch.Tensor], view: int, sh_degree: int) -> float:
    frame = trainer.scene.train[view]
    with torch.no_grad():
        out = render(Gaussians.from_params(params), frame.camera, sh_degree=sh_degree,
                     background=trainer.background, backend=trainer.backend)
        return float(training_loss(out.image, frame.image.to(trainer.device), trainer.cfg.lambda_dssim))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("train_args", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    train_args = [a for a in args.train_args if a != "--"]
    with tempfile.TemporaryDirectory() as tmp:
        cfg = config_from_args(build_parser().parse_args(["train", *train_args, "--out", str(Path(tmp) / "run")]))
        cfg.validate()
        torch.manual_seed(cfg.seed)
        scene, gaussians = prepare(cfg)
        trainer = Trainer(cfg, scene, gaussians, hooks=[])
        picks: list[int] = []
        next_view = trainer.sampler.next
        trainer.sampler.next = lambda: picks.append(next_view()) or picks[-1]  # type: ignore[method-assign]
        records = []
        original_step = trainer.optimizer.step

        def step(closure=None, step_loss=None) -> None:
            opt = trainer.optimizer
            t = opt.state[opt.param_groups[0]["params"][0]].get("step", 0) + 1
            if t % args.every:
                return original_step(closure, step_loss)
            named = {g["name"]: g["params"][0] for g in opt.param_groups}
            before = {k: p.detach().clone() for k, p in named.items()}
            grads = {k: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)) for k, p in named.items()}
            original_step(closure, step_loss)
            after = {k: p.detach().clone() for k, p in named.items()}
            sh = active_sh_degree(t, cfg)
            view = picks[-1]
            base = view_loss(trainer, before, view, sh)
            record = {"step": t, "kappa": opt.radius_control.scale if opt.radius_control else None, "groups": {}}
            total_pred = 0.0
            for k in named:
                s = (after[k] - before[k]).double()
                d = opt.state[named[k]].get("curv_ema", torch.zeros(())).double().clamp_min(0.0)
                pred = -float((grads[k].double() * s).sum() + 0.5 * (d * s * s).sum())
                actual = base - view_loss(trainer, {**before, k: after[k]}, view, sh)
                total_pred += pred
                record["groups"][k] = {"pred": pred, "actual": actual, "rho": actual / pred if pred > 0 else None}
            actual_all = base - view_loss(trainer, after, view, sh)
            record["all"] = {"pred": total_pred, "actual": actual_all,
                             "rho": actual_all / total_pred if total_pred > 0 else None}
            records.append(record)
            print(t, {k: (round(v["rho"], 2) if v["rho"] is not None else None) for k, v in record["groups"].items()},
                  "all", record["all"]["rho"], flush=True)

        trainer.optimizer.step = step  # type: ignore[method-assign]
        for iteration in range(1, cfg.iters + 1):
            trainer.train_step(iteration)
            trainer.state.iteration = iteration

    summary = {}
    for k in list(records[0]["groups"]) + ["all"]:
        rhos = [(r["groups"][k] if k != "all" else r["all"])["rho"] for r in records]
        used = [x for x in rhos if x is not None]
        summary[k] = {"tests": len(rhos), "skipped": len(rhos) - len(used),
                      "rho_median": statistics.median(used) if used else None,
                      "below_0.25": sum(x < 0.25 for x in used) / len(used) if used else None,
                      "above_0.75": sum(x > 0.75 for x in used) / len(used) if used else None,
                      "share_of_predicted": statistics.mean(
                          (r["groups"][k]["pred"] / r["all"]["pred"]) if k != "all" and r["all"]["pred"] > 0 else 1.0
                          for r in records)}
    Path(args.out).write_text(json.dumps({"args": train_args, "every": args.every, "summary": summary,
                                          "records": records}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
