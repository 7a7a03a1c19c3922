"""The training loop: schedules, evaluation, checkpoints, resume, outputs.

One run writes into its output folder ``DIR``:

- ``config.json``      the full :class:`TrainConfig` (what ``--resume`` reads back),
- ``metrics.json``     test metrics at each eval iteration (updated atomically),
- ``checkpoint.pt``    parameters, optimiser state, RNG states, iteration, timers,
- ``point_cloud.ply``  the final Gaussians in the INRIA PLY layout,
- ``renders/iter_N/``  a few test renders next to their ground truth.
"""

from __future__ import annotations

import json
import resource
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from trsplat.bench.machine import machine_label
from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError
from trsplat.gaussians import Gaussians, save_ply
from trsplat.io_utils import atomic_write, save_torch, write_json
from trsplat.loss import training_loss
from trsplat.metrics import evaluate_images
from trsplat.render import render
from trsplat.render.backends import resolve_backend

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
PLY = "point_cloud.ply"


class ViewSampler:
    """3DGS's camera order: pop from a shuffled stack of the training views, reshuffle when empty."""

    def __init__(self, n_views: int, seed: int) -> None:
        self.n_views = n_views
        self.generator = torch.Generator().manual_seed(seed)
        self.stack: list[int] = []

    def next(self) -> int:
        if not self.stack:
            self.stack = torch.randperm(self.n_views, generator=self.generator).tolist()
        return self.stack.pop()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "stack": list(self.stack)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        self.stack = list(state["stack"])


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports kilobytes)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def peak_cuda_bytes() -> int | None:
    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def active_sh_degree(iteration: int, cfg: TrainConfig) -> int:
    """3DGS ramp: degree 0 for the first ``sh_interval`` iterations, then +1 per interval."""
    return min(cfg.sh_degree, (iteration - 1) // cfg.sh_interval)


def save_render_pair(path: Path, image: torch.Tensor, gt: torch.Tensor) -> None:
    """Write render | ground truth side by side as an 8-bit PNG."""
    pair = torch.cat([image, gt], dim=1).clamp(0, 1).cpu().numpy()
    with atomic_write(path) as tmp:
        Image.fromarray((pair * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")


@torch.no_grad()
def evaluate(gaussians: Gaussians, frames, *, sh_degree: int, background, backend: str,
             lpips: bool = True, save_dir: Path | None = None, n_saved: int = 0) -> dict[str, float]:
    """Mean PSNR/SSIM/LPIPS over ``frames`` (renders clamped to [0, 1], as 3DGS evaluates)."""
    totals: dict[str, float] = {}
    for k, frame in enumerate(frames):
        out = render(gaussians, frame.camera, sh_degree=sh_degree, background=background, backend=backend)
        image = out.image.clamp(0, 1)
        gt = frame.image.to(image.device)
        for key, value in evaluate_images(image, gt, lpips=lpips).items():
            totals[key] = totals.get(key, 0.0) + value
        if save_dir is not None and k < n_saved:
            save_render_pair(save_dir / f"{k:03d}_{Path(frame.camera.name).stem or k}.png", image, gt)
    return {key: value / len(frames) for key, value in totals.items()}


@dataclass
class RunState:
    """Everything that changes during a run and must survive a resume."""

    iteration: int = 0
    train_seconds: float = 0.0
    evals: list[dict[str, Any]] | None = None


class Trainer:
    """Trains ``gaussians`` on ``scene`` according to ``cfg``, writing into ``cfg.out``."""

    def __init__(self, cfg: TrainConfig, scene, gaussians: Gaussians) -> None:
        self.cfg = cfg
        self.scene = scene
        self.out = Path(cfg.out)
        self.backend = resolve_backend(cfg.backend)
        self.device = torch.device("cuda" if self.backend == "cuda" else "cpu")
        self.machine = machine_label(str(self.device))  # what this process's train seconds are timed on
        self.gaussians = gaussians.to(self.device).requires_grad_(True)
        self.background = torch.tensor(scene.background, dtype=torch.float32, device=self.device)
        self.sampler = ViewSampler(len(scene.train), cfg.seed)
        self.optimizer = build_optimizer(cfg, self.gaussians, scene)
        self.state = RunState(evals=[])

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "iteration": self.state.iteration,
            "train_seconds": self.state.train_seconds,
            "evals": self.state.evals,
            "params": {k: v.detach().cpu() for k, v in self.gaussians.params().items()},
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }

    def save_checkpoint(self) -> None:
        save_torch(self.out / CHECKPOINT, self.checkpoint())

    def load_checkpoint(self, path: Path) -> None:
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise TrsplatError(f"{path}: cannot read checkpoint ({exc})") from None
        with torch.no_grad():
            for name, tensor in self.gaussians.params().items():
                if tensor.shape != ckpt["params"][name].shape:
                    raise TrsplatError(f"{path}: parameter {name} has shape "
                                       f"{tuple(ckpt['params'][name].shape)}, the scene gives {tuple(tensor.shape)}")
                tensor.copy_(ckpt["params"][name])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = RunState(ckpt["iteration"], ckpt["train_seconds"], ckpt["evals"])

    # -- outputs ----------------------------------------------------------------------------
    def write_metrics(self, finished: bool = False) -> None:
        """``finished`` is set once the final PLY is written: a copy of ``metrics.json`` and
        ``config.json`` alone (the committed study results) then still says the run completed."""
        write_json(self.out / METRICS, {
            "scene": self.scene.name,
            "config": self.cfg.to_dict(),
            "n_gaussians": len(self.gaussians),
            "backend": self.backend,
            "finished": finished,
            "evals": self.state.evals,
        })

    def _run_peak(self, key: str, now: int | None) -> int | None:
        """Peak memory of the whole run: this process's peak, or an earlier eval's if a process
        before a resume peaked higher."""
        earlier = [e[key] for e in self.state.evals if e.get(key) is not None]
        return None if now is None and not earlier else max(earlier + ([now] if now is not None else []))

    def run_eval(self, iteration: int) -> dict[str, Any]:
        metrics = evaluate(
            self.gaussians.detach(), self.scene.test, sh_degree=active_sh_degree(iteration, self.cfg),
            background=self.background, backend=self.backend, lpips=self.cfg.lpips,
            save_dir=self.out / "renders" / f"iter_{iteration}", n_saved=self.cfg.n_saved_renders,
        )
        record = {"iteration": iteration, **metrics, "n_alive": self.gaussians.count_alive(),
                  "train_seconds": self.state.train_seconds,
                  "seconds_per_iteration": self.state.train_seconds / max(iteration, 1),
                  "peak_rss_bytes": self._run_peak("peak_rss_bytes", peak_rss_bytes()),
                  "peak_cuda_bytes": self._run_peak("peak_cuda_bytes", peak_cuda_bytes()),
                  "machine": self.machine}
        stats = getattr(self.optimizer, "stats", None)
        if stats is not None:  # trust-region optimisers: share of steps clipped since the last eval
            record["on_bound_fraction"] = stats.fractions()
            stats.reset()
        self.state.evals = [e for e in self.state.evals if e["iteration"] != iteration] + [record]
        self.write_metrics()
        return record

    # -- the loop ---------------------------------------------------------------------------
    def train_step(self, iteration: int) -> tuple[float, float]:
        """One optimisation step on ``grad_views`` views; returns (loss, train-image PSNR)."""
        sh_degree = active_sh_degree(iteration, self.cfg)
        view_ids = [self.sampler.next() for _ in range(self.cfg.grad_views)]
        total_loss, total_mse = 0.0, 0.0
        for view in view_ids:
            frame = self.scene.train[view]
            out = render(self.gaussians, frame.camera, sh_degree=sh_degree, background=self.background,
                         backend=self.backend)
            gt = frame.image.to(self.device)
            loss = training_loss(out.image, gt, self.cfg.lambda_dssim) / len(view_ids)
            loss.backward()
            total_loss += float(loss.detach())
            with torch.no_grad():
                total_mse += float(torch.mean((out.image.detach().clamp(0, 1) - gt) ** 2)) / len(view_ids)
        self.optimizer.step(iteration, context=StepContext(self, sh_degree, view_ids))
        self.optimizer.zero_grad()
        return total_loss, float(-10.0 * np.log10(max(total_mse, 1e-12)))

    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        write_json(self.out / CONFIG, cfg.to_dict())
        eval_at = sorted(set(cfg.eval_at) | {cfg.iters})
        bar = tqdm(total=cfg.iters, initial=self.state.iteration, desc=f"train {self.scene.name}",
                   unit="it", dynamic_ncols=True, mininterval=0.5)
        loss_ema = psnr_ema = None
        stop = _StopRequest()
        try:
            while self.state.iteration < cfg.iters:
                iteration = self.state.iteration + 1
                start = time.perf_counter()
                loss, psnr = self.train_step(iteration)
                self.state.train_seconds += time.perf_counter() - start
                self.state.iteration = iteration
                if not np.isfinite(loss):
                    raise TrsplatError(f"iteration {iteration}: the loss is {loss}; the run diverged "
                                       f"(last good checkpoint: {self.out / CHECKPOINT})")
                loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
                psnr_ema = psnr if psnr_ema is None else 0.9 * psnr_ema + 0.1 * psnr
                bar.update(1)
                if iteration % 10 == 0:
                    bar.set_postfix(loss=f"{loss_ema:.4f}", psnr=f"{psnr_ema:.2f}")
                if iteration in eval_at:
                    record = self.run_eval(iteration)
                    bar.write(f"[eval {iteration}] psnr {record['psnr']:.2f}  ssim {record['ssim']:.4f}"
                              + (f"  lpips {record['lpips']:.4f}" if "lpips" in record else ""))
                if iteration in eval_at or iteration % cfg.checkpoint_every == 0 or stop.requested:
                    self.save_checkpoint()
                if stop.requested and iteration < cfg.iters:
                    raise TrsplatError(f"interrupted at iteration {iteration}; checkpoint saved, "
                                       f"continue with: trsplat train --resume {self.out}")
        finally:
            stop.restore()
            bar.close()
        save_ply(self.gaussians, self.out / PLY)
        self.save_checkpoint()
        self.write_metrics(finished=True)
        return json.loads((self.out / METRICS).read_text())


class _StopRequest:
    """Ctrl-C / SIGTERM handler: the first signal asks the loop to stop after the current iteration
    (so the checkpoint holds a consistent state); a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self.previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class StepContext:
    """What an optimiser may need beyond gradients: the TR curvature estimator renders other views."""

    trainer: Trainer
    sh_degree: int
    grad_view_ids: list[int]

    def curvature_views(self, generator: torch.Generator) -> list:
        """|S₂| training views drawn uniformly, excluding the gradient views when possible."""
        n = len(self.trainer.scene.train)
        pool = [i for i in range(n) if i not in self.grad_view_ids] or list(range(n))
        picks = torch.randint(0, len(pool), (self.trainer.cfg.curvature_views,), generator=generator)
        return [self.trainer.scene.train[pool[int(i)]] for i in picks]

    @property
    def residual_fn(self):
        from trsplat.optim.curvature import make_residual_fn

        cfg = self.trainer.cfg
        return make_residual_fn(sh_degree=self.sh_degree, background=self.trainer.background,
                                backend=self.trainer.backend, form=cfg.residual_form,
                                lambda_dssim=cfg.lambda_dssim, delta=cfg.residual_delta)


def build_optimizer(cfg: TrainConfig, gaussians: Gaussians, scene):
    """The optimiser named by ``cfg.optimizer`` over the raw tensors of ``gaussians``."""
    from trsplat.optim.adam import GaussianAdam
    from trsplat.optim.curvature import CurvatureEstimator
    from trsplat.optim.tr import AdamTrustRegion, TrustRegionNewton

    adam_kwargs = dict(
        extent=scene.extent, max_steps=cfg.lr_means_max_steps or cfg.iters,
        lr_means=cfg.lr_means, lr_means_final=cfg.lr_means_final, lr_sh_dc=cfg.lr_sh_dc,
        lr_sh_rest=cfg.lr_sh_rest, lr_opacity=cfg.lr_opacity, lr_scale=cfg.lr_scale,
        lr_rotation=cfg.lr_rotation, eps=cfg.adam_eps,
    )
    if cfg.optimizer == "adam":
        return GaussianAdam(gaussians, **adam_kwargs)
    tr = cfg.trust_region()
    if cfg.optimizer == "adam-tr":
        return AdamTrustRegion(gaussians, tr=tr, eps_start=cfg.eps_start, eps_end=cfg.eps_end, **adam_kwargs)
    return TrustRegionNewton(
        gaussians, estimator=CurvatureEstimator(cfg.curvature, cfg.n_probes), tr=tr,
        eps_start=cfg.eps_start, eps_end=cfg.eps_end, max_steps=cfg.iters, theta1=cfg.theta1,
        theta2=cfg.theta2, interval=cfg.curvature_interval, guard=cfg.guard, guard_floor=cfg.guard_floor,
        bias_correction=cfg.bias_correction, step_norm=cfg.step_norm,
        step_norm_quantile=cfg.step_norm_quantile, seed=cfg.seed,
    )


def prepare(cfg: TrainConfig):
    """Load the scene and the initial Gaussians for ``cfg``."""
    from trsplat.data.scene import detect_format, init_gaussians, load_scene

    background = cfg.background
    if background == "auto":  # 3DGS: black unless the capture has alpha (Blender/ngp: white)
        background = "black" if detect_format(cfg.data)[0] == "colmap" else "white"
    scene = load_scene(cfg.data, downscale=cfg.downscale, background=background,
                       llffhold=cfg.llffhold, max_test_views=cfg.max_test_views)
    gaussians = init_gaussians(scene, n_random=cfg.n_random_init, init_box=cfg.init_box,
                               seed=cfg.seed, init=cfg.init)
    return scene, gaussians


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train a new run described by ``cfg``."""
    cfg.validate()
    out = Path(cfg.out)
    if (out / CHECKPOINT).exists():
        raise TrsplatError(f"{out} already holds a run; use --resume {out} to continue it or choose another --out")
    torch.manual_seed(cfg.seed)
    scene, gaussians = prepare(cfg)
    return Trainer(cfg, scene, gaussians).run()


def resume(out_dir: str | Path) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its checkpoint; reaches the same result as an uninterrupted run."""
    out = Path(out_dir)
    if not (out / CHECKPOINT).is_file():
        raise TrsplatError(f"{out}: no {CHECKPOINT} to resume from")
    cfg = TrainConfig.from_dict(json.loads((out / CONFIG).read_text()))
    cfg.out = str(out)
    scene, gaussians = prepare(cfg)
    trainer = Trainer(cfg, scene, gaussians)
    trainer.load_checkpoint(out / CHECKPOINT)
    return trainer.run()
