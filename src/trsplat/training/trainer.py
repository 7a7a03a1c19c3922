"""The training loop: one step, its hook points, evaluation, checkpoints and resume.

One step (``Trainer.train_step``)::

    render the step's views -> loss -> backward          (strategy.step_pre_backward before it)
    -> world.all_reduce_sum(grads)                        (data-parallel: sum over processes)
    -> strategy.step_post_backward(...)                   (densification; none by default)
    -> schedulers.step(iteration); optimizer.step(closure) (closure: the curvature estimate when due)
    -> hooks.on_step / on_eval                            (progress, logging, viewer)

The run folder is a :class:`~trsplat.training.rundir.RunDir`.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from trsplat.machine import available_memory_bytes, machine_label
from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError
from trsplat.gaussians import Gaussians
from trsplat.loss import residuals, training_loss
from trsplat.optim.build import build_optimizer
from trsplat.optim.curvature import CurvatureEstimator, ResidualFn
from trsplat.optim.radius import StepLoss
from trsplat.optim.tr import TrustRegionNewton
from trsplat.render import render
from trsplat.render.backends import get_backend, resolve_backend
from trsplat.strategy import NoDensification, Strategy, StepInfo, build_strategy
from trsplat.training.batching import batch_rules, batch_size
from trsplat.training.distributed import SINGLE, LostRank, World
from trsplat.training.evaluation import active_sh_degree, evaluate
from trsplat.training.hooks import Hook, ProgressBar
from trsplat.training.plots import TrainingCurves
from trsplat.training.rundir import CHECKPOINT_FORMAT, RunDir

FINITE_CHECK_EVERY = 100
"""Iterations between checks that every parameter is finite (also before every save)."""
COLLAPSE_DB = 10.0
"""An eval this far below the run's best test PSNR stops the run as collapsed."""

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


def make_residual_fn(*, sh_degree: int, background: torch.Tensor, backend: str, form: str,
                     lambda_dssim: float, delta: float) -> ResidualFn:
    """The residual vector of the training loss for one view, as a function of the raw tensors
    (what the curvature estimators differentiate in both AD modes)."""

    def fn(params: dict[str, torch.Tensor], frame) -> torch.Tensor:
        out = render(Gaussians.from_params(params), frame.camera, sh_degree=sh_degree, background=background,
                     backend=backend)
        return residuals(out.image, frame.image.to(out.image.device), form=form,
                         lambda_dssim=lambda_dssim, delta=delta)

    def numel(frame) -> int:
        """The length of ``fn(params, frame)`` without rendering (the estimators' probes of views
        another process renders)."""
        gt = frame.image
        return residuals(torch.zeros_like(gt), gt, form=form, lambda_dssim=lambda_dssim, delta=delta).numel()

    fn.numel = numel
    return fn


@dataclass
class RunState:
    """Everything that changes during a run and must survive a resume."""

    iteration: int = 0
    train_seconds: float = 0.0
    evals: list[dict[str, Any]] = field(default_factory=list)


class Trainer:
    """Trains ``gaussians`` on ``scene`` according to ``cfg``, writing into ``cfg.out``.

    ``strategy`` (default: from ``cfg.strategy``) may change the set of Gaussians; ``hooks``
    observe (default: a progress bar); ``world`` is this process's place in data-parallel
    training (default: alone). With several processes each renders its share of every step's
    views, the sums of gradients and curvature estimates are taken over all of them, and only
    rank 0 writes the run folder and runs the hooks.
    """

    def __init__(self, cfg: TrainConfig, scene, gaussians: Gaussians, *, strategy: Strategy | None = None,
                 hooks: Iterable[Hook] | None = None, world: World = SINGLE) -> None:
        if cfg.batch_views is None:  # one view per process
            cfg = replace(cfg, batch_views=batch_size(cfg, world.size))
        self.cfg = cfg
        self.rules = batch_rules(cfg)  # what the optimiser and schedules follow (docs/training.md)
        self.world = world
        self._stop: _StopRequest | None = None  # the signal handler while the loop runs
        self.stop_agreed = False  # whether some process asked to stop at the last step
        self._changed_state = False  # whether the current step changed parameters or optimiser state
        self.scene = scene
        self.run_dir = RunDir(cfg.out)
        self.backend = resolve_backend(cfg.backend)
        self.device = get_backend(self.backend).device()
        self.machine = machine_label(str(self.device))  # what this process's train seconds are timed on
        self.gaussians = gaussians.to(self.device).requires_grad_(True)
        self.background = torch.tensor(scene.background, dtype=torch.float32, device=self.device)
        self.sampler = ViewSampler(len(scene.train), cfg.seed)
        self.optimizer, self.schedulers = self._build_optimizer()
        self.estimator = CurvatureEstimator(cfg.optim.curvature, cfg.optim.n_probes)
        self.strategy = strategy if strategy is not None else build_strategy(
            cfg.strategy, self.rules.optim, iters=cfg.iters, extent=scene.extent, background=scene.background,
            seed=cfg.seed)
        self.hooks = (list(hooks) if hooks is not None else [ProgressBar()]) if world.is_writer else []
        self.state = RunState()
        self.last_checkpoint: int | None = None

    def _build_optimizer(self):
        return build_optimizer(self.rules.optim, self.gaussians.params(), extent=self.scene.extent,
                               iters=self.cfg.iters, seed=self.cfg.seed)

    def sh_degree(self, iteration: int) -> int:
        """The SH degree rendered at ``iteration`` (the 3DGS ramp, in steps of this batch size)."""
        return active_sh_degree(iteration, self.rules)

    # -- checkpoints ------------------------------------------------------------------------
    def checkpoint(self) -> dict[str, Any]:
        return {
            "iteration": self.state.iteration,
            "train_seconds": self.state.train_seconds,
            "evals": self.state.evals,
            "params": {k: v.detach().cpu() for k, v in self.gaussians.params().items()},
            "optimizer": self.optimizer.state_dict(),
            "strategy": self.strategy.state_dict(),
            "sampler": self.sampler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
        }

    def load_checkpoint(self, ckpt: dict[str, Any]) -> None:
        """Restore a checkpoint of this run (see :meth:`RunDir.load_checkpoint`)."""
        path = self.run_dir.checkpoint_path
        if ckpt.get("format") != CHECKPOINT_FORMAT:
            raise TrsplatError(f"{path}: checkpoint written by an earlier trsplat (format {ckpt.get('format', 1)}, "
                               f"this version reads {CHECKPOINT_FORMAT}); it cannot be resumed, but eval, "
                               f"render and export still read it")
        try:  # a strategy may have changed the number of Gaussians: take the saved ones as they are
            saved = Gaussians.from_params({k: v.to(self.device) for k, v in ckpt["params"].items()})
        except (KeyError, ValueError) as exc:
            raise TrsplatError(f"{path}: bad parameters ({exc})") from None
        self.gaussians = saved.requires_grad_(True)
        self.optimizer, self.schedulers = self._build_optimizer()
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.strategy.load_state_dict(ckpt.get("strategy", {}))
        self.sampler.load_state_dict(ckpt["sampler"])
        torch.set_rng_state(ckpt["torch_rng"])
        self.state = RunState(ckpt["iteration"], ckpt["train_seconds"], ckpt["evals"])
        self.last_checkpoint = self.state.iteration

    # -- outputs ----------------------------------------------------------------------------
    def write_metrics(self, finished: bool = False) -> None:
        """``finished`` is set once the final PLY is written: a copy of ``metrics.json`` and
        ``config.json`` alone (the committed study results) then still says the run completed."""
        if not self.world.is_writer:
            return
        metrics = {
            "scene": self.scene.name,
            "config": self.cfg.to_dict(),
            "n_gaussians": len(self.gaussians),
            "backend": self.backend,
            "finished": finished,
            "evals": self.state.evals,
        }
        if records := self.strategy.records():  # densification: one record per refinement
            metrics["densify"] = records
        self.run_dir.write_metrics(metrics)

    def _run_peak(self, key: str, now: int | None) -> int | None:
        """Peak memory of the whole run: this process's peak, or an earlier eval's if a process
        before a resume peaked higher."""
        earlier = [e[key] for e in self.state.evals if e.get(key) is not None]
        return None if now is None and not earlier else max(earlier + ([now] if now is not None else []))

    def run_eval(self, iteration: int) -> dict[str, Any]:
        metrics = evaluate(
            self.gaussians.detach(), self.scene.test, sh_degree=self.sh_degree(iteration),
            background=self.background, backend=self.backend, lpips=self.cfg.eval.lpips,
            save_dir=self.run_dir.renders_dir(iteration), n_saved=self.cfg.eval.n_saved_renders, world=self.world,
        )
        record = {"iteration": iteration, **metrics, "n_alive": self.gaussians.count_alive(),
                  "train_seconds": self.state.train_seconds,
                  "seconds_per_iteration": self.state.train_seconds / max(iteration, 1),
                  "peak_rss_bytes": self._run_peak("peak_rss_bytes", peak_rss_bytes()),
                  "peak_cuda_bytes": self._run_peak("peak_cuda_bytes", peak_cuda_bytes()),
                  "machine": self.machine}
        trust_region = getattr(self.optimizer, "trust_region", None)
        if trust_region is not None:  # share of steps clipped since the last eval
            record["on_bound_fraction"] = trust_region.stats.fractions()
            trust_region.stats.reset()
        radius_control = getattr(self.optimizer, "radius_control", None)
        if radius_control is not None:  # the adaptive radius: its ratio tests since the last eval
            record["ratio_test"] = radius_control.window_statistics()
            radius_control.reset_window()
        self.state.evals = [e for e in self.state.evals if e["iteration"] != iteration] + [record]
        self.write_metrics()
        return record

    # -- one step ---------------------------------------------------------------------------
    def train_step(self, iteration: int) -> tuple[float, float]:
        """One optimisation step on ``batch_views`` views; returns (loss, train-image PSNR).
        Data-parallel: sets :attr:`stop_agreed` when a process had been asked to stop (Ctrl-C,
        SIGTERM) before the step's collective, so that all processes stop after the same step."""
        sh_degree = self.sh_degree(iteration)
        world = self.world
        info = StepInfo(iteration, [self.sampler.next() for _ in range(self.cfg.batch_views)],
                        reduce=world.all_reduce_sum if world.distributed else None)
        total_loss, total_mse = 0.0, 0.0
        for view in world.share(info.view_ids):
            frame = self.scene.train[view]
            out = render(self.gaussians, frame.camera, sh_degree=sh_degree, background=self.background,
                         backend=self.backend)
            info.renders.append(out)
            gt = frame.image.to(self.device)
            loss = training_loss(out.image, gt, self.cfg.lambda_dssim) / len(info.view_ids)
            self.strategy.step_pre_backward(self.gaussians, self.optimizer, info)
            if loss.requires_grad:  # False when no Gaussian reaches the view: nothing to learn from it
                loss.backward()
            total_loss += float(loss.detach())
            with torch.no_grad():
                total_mse += float(torch.mean((out.image.detach().clamp(0, 1) - gt) ** 2)) / len(info.view_ids)
        if world.distributed:
            stop_requested = self._stop is not None and self._stop.requested
            total_loss, total_mse = self._sum_over_processes(total_loss, total_mse, stop_requested)
        self._changed_state = True  # from here on a lost process leaves this step half done
        self.strategy.step_post_backward(self.gaussians, self.optimizer, info)
        for scheduler in self.schedulers:
            scheduler.step(iteration)
        if isinstance(self.optimizer, TrustRegionNewton):  # the only optimiser that uses a curvature
            step_loss = self._step_loss(sh_degree, info.view_ids, total_loss) if self.optimizer.ratio_test_due() \
                else None
            self.optimizer.step(self._curvature_closure(sh_degree, info.view_ids), step_loss)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total_loss, float(-10.0 * np.log10(max(total_mse, 1e-12)))

    def _sum_over_processes(self, loss: float, mse: float, stop_requested: bool) -> tuple[float, float]:
        """Data-parallel: the step's loss, MSE and stop requests summed over the processes (one
        small collective), then the gradients (one collective; a parameter without a gradient on
        every process keeps none, as in one process)."""
        params = self.gaussians.params()
        has_grad = [float(p.grad is not None) for p in params.values()]
        loss, mse, stops, *has_grad = self.world.sum_floats([loss, mse, float(stop_requested), *has_grad])
        self.stop_agreed = stops > 0
        grads = {}
        for (name, p), anywhere in zip(params.items(), has_grad):
            if anywhere > 0:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                grads[name] = p.grad
        self.world.all_reduce_sum(grads)
        return loss, mse

    def _views_loss(self, sh_degree: int, view_ids: list[int]) -> float:
        """The training loss of ``view_ids`` at the current parameters (mean over the views, as
        the gradient's), from forward renders without autograd (each process renders its share)."""
        total = 0.0
        with torch.no_grad():
            for view in self.world.share(view_ids):
                frame = self.scene.train[view]
                out = render(self.gaussians.detach(), frame.camera, sh_degree=sh_degree,
                             background=self.background, backend=self.backend)
                total += float(training_loss(out.image, frame.image.to(self.device), self.cfg.lambda_dssim)
                               / len(view_ids))
        return self.world.sum_floats([total])[0] if self.world.distributed else total

    def _step_loss(self, sh_degree: int, view_ids: list[int], loss_before: float) -> StepLoss:
        """The adaptive radius's ratio test: the step's loss before (the gradient renders' loss, or
        a fresh render when a densification strategy may have changed the Gaussians since) and a
        callable for it after the step (one forward render per view). With ``--tr-radius-test
        held-out`` the same for training views the optimizer draws apart from the step's (two
        forward renders per view)."""
        control = self.optimizer.radius_control
        if control is not None and control.test_on == "held-out":
            held_out = control.draw_views(len(self.scene.train), view_ids)
            return StepLoss(self._views_loss(sh_degree, held_out), lambda: self._views_loss(sh_degree, held_out))
        if not isinstance(self.strategy, NoDensification):
            loss_before = self._views_loss(sh_degree, view_ids)
        return StepLoss(loss_before, lambda: self._views_loss(sh_degree, view_ids))

    def _curvature_closure(self, sh_degree: int, grad_view_ids: list[int]) -> Callable:
        """What 3DGS²-TR calls when its curvature refresh is due: the diagonal estimate on |S₂|
        training views per batch view, drawn uniformly, excluding the gradient views when
        possible (data-parallel: each process estimates its share, the sum is taken over all)."""

        def closure(generator: torch.Generator) -> dict[str, torch.Tensor]:
            o = self.cfg.optim
            n = len(self.scene.train)
            pool = [i for i in range(n) if i not in grad_view_ids] or list(range(n))
            picks = torch.randint(0, len(pool), (o.curvature_views * self.cfg.batch_views,), generator=generator)
            views = [self.scene.train[pool[int(i)]] for i in picks]
            residual_fn = make_residual_fn(sh_degree=sh_degree, background=self.background, backend=self.backend,
                                           form=o.residual_form, lambda_dssim=self.cfg.lambda_dssim,
                                           delta=o.residual_delta)
            diag = self.estimator.estimate({k: v.detach() for k, v in self.gaussians.params().items()}, views,
                                           residual_fn, generator, share=(self.world.rank, self.world.size))
            self.world.all_reduce_sum(diag)
            return diag

        return closure

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train to ``cfg.iters``, rank 0 holding the run folder's lock; returns ``metrics.json``."""
        with contextlib.ExitStack() as stack:
            self.world.from_writer(lambda: stack.enter_context(self.run_dir.locked()))
            return self._run()

    def _run(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.world.is_writer:
            self.run_dir.write_config(cfg)
        eval_at = cfg.eval_iterations()
        stop = self._stop = _StopRequest()
        for hook in self.hooks:
            hook.on_start(self)
        try:
            while self.state.iteration < cfg.iters:
                iteration = self.state.iteration + 1
                start = time.perf_counter()
                loss, psnr = self._step_or_rewind(iteration)
                self.state.train_seconds += time.perf_counter() - start
                self.state.iteration = iteration
                if not np.isfinite(loss):
                    self._diverged(f"the loss is {loss}")
                # one process: stop after the step a signal came in; several: after the step all agreed on
                stopping = self.stop_agreed if self.world.distributed else stop.requested
                saving = iteration in eval_at or iteration % cfg.checkpoint_every == 0 or stopping
                if saving or iteration % FINITE_CHECK_EVERY == 0:
                    self._check_finite()
                if iteration % cfg.dist_check_every == 0 or saving:
                    self.world.check_identical(self.gaussians.params(), iteration)
                for hook in self.hooks:
                    hook.on_step(self, iteration, loss, psnr)
                if iteration in eval_at:
                    record = self.run_eval(iteration)
                    for hook in self.hooks:
                        hook.on_eval(self, record)
                    self._check_collapse(record)
                if saving:
                    self.save_checkpoint()
                if stopping and iteration < cfg.iters:
                    raise TrsplatError(f"interrupted at iteration {iteration}; checkpoint saved, "
                                       f"continue with: {self._resume_command()}")
        except LostRank as exc:  # (torchrun's SIGTERM to the survivors is still caught while saving)
            raise self._lost(exc) from None
        finally:
            stop.restore()
            self._stop = None
            for hook in self.hooks:
                hook.on_close(self)
        self._check_finite()
        if self.world.is_writer:
            self.run_dir.save_ply(self.gaussians)
        self.save_checkpoint()
        self.write_metrics(finished=True)
        metrics = self.world.from_writer(self.run_dir.read_metrics)
        for hook in self.hooks:
            hook.on_finish(self, metrics)
        return metrics

    def save_checkpoint(self) -> None:
        """Rank 0 writes ``checkpoint.pt`` (every rank holds the same state)."""
        if self.world.is_writer:
            self.run_dir.save_checkpoint(self.checkpoint())
        self.last_checkpoint = self.state.iteration

    # -- data-parallel failures ---------------------------------------------------------------
    def _step_or_rewind(self, iteration: int) -> tuple[float, float]:
        """:meth:`train_step`; if another process is lost before this step changed any state,
        rewind the view order and RNG so the state is that of the last finished step."""
        if not self.world.distributed:
            return self.train_step(iteration)
        sampler, rng = self.sampler.state_dict(), torch.get_rng_state()
        self._changed_state = False
        try:
            result = self.train_step(iteration)
        except LostRank:
            if not self._changed_state:
                self.sampler.load_state_dict(sampler)
                torch.set_rng_state(rng)
            raise
        self._changed_state = False
        return result

    def _lost(self, exc: LostRank) -> TrsplatError:
        """Another process stopped: rank 0 saves a checkpoint when the state is consistent (between
        steps, or before the step changed anything); the message names the checkpoint to resume."""
        if self.world.is_writer and not self._changed_state and self.state.iteration != self.last_checkpoint:
            self._check_finite()
            self.save_checkpoint()
        if self.last_checkpoint is None:
            return TrsplatError(f"{exc}; the run stopped at iteration {self.state.iteration}, no checkpoint was written")
        return TrsplatError(f"{exc}; the run stopped at iteration {self.state.iteration}, the checkpoint of iteration "
                            f"{self.last_checkpoint} is in {self.run_dir.checkpoint_path} (rank 0); continue with: "
                            f"{self._resume_command()}")

    def _resume_command(self) -> str:
        launcher = "torchrun --nproc-per-node N -m " if self.world.distributed else ""
        return f"{launcher}trsplat train --resume {self.run_dir.path}"

    # -- divergence -------------------------------------------------------------------------
    def _diverged(self, what: str) -> None:
        """Stop with a message; the checkpoint on disk (if any) is from before the divergence."""
        last = (f"the last good checkpoint (iteration {self.last_checkpoint}) is kept in "
                f"{self.run_dir.checkpoint_path}" if self.last_checkpoint is not None
                else "no checkpoint was written")
        raise TrsplatError(f"iteration {self.state.iteration}: {what}; the run diverged and stopped ({last}; "
                           f"try smaller learning rates or trust-region epsilon)")

    def _check_finite(self) -> None:
        """Every raw parameter finite, and every scale exp(log_scale) too (what a PLY viewer draws)."""
        with torch.no_grad():
            bad = [name for name, p in self.gaussians.params().items() if not bool(torch.isfinite(p).all())]
            if not bad and not bool(torch.isfinite(self.gaussians.scales).all()):
                bad = ["log_scales (scales overflow)"]
        if bad:
            self._diverged(f"non-finite Gaussian parameters ({', '.join(bad)})")

    def _check_collapse(self, record: dict[str, Any]) -> None:
        best = max(e["psnr"] for e in self.state.evals)
        if not np.isfinite(record["psnr"]) or record["psnr"] < best - COLLAPSE_DB:
            self._diverged(f"test PSNR fell to {record['psnr']:.2f} dB from its best {best:.2f} dB")


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


BYTES_PER_GAUSSIAN = 59 * 4 * 12
"""Rough peak memory of one Gaussian in training: 59 floats in the parameters, their gradients,
two optimiser states and the projection and compositing buffers (measured peaks stay below it)."""

RESUME_EXTENDABLE = ("iters", "eval_at", "checkpoint_every", "n_saved_renders", "lpips", "dist_check_every",
                     "dist_timeout")
"""Options ``--resume`` may change: the run continues with the new values."""


def load_training_scene(cfg: TrainConfig):
    """Load the scene (views, cameras, SfM points) of ``cfg``, without initial Gaussians."""
    from trsplat.data.scene import detect_format, load_scene

    s = cfg.scene
    background = s.background
    if background == "auto":  # 3DGS: black unless the capture has alpha (Blender/ngp: white)
        background = "black" if detect_format(s.data)[0] == "colmap" else "white"
    return load_scene(s.data, downscale=s.downscale, background=background,
                      llffhold=s.llffhold, max_test_views=s.max_test_views)


def prepare(cfg: TrainConfig):
    """Load the scene and the initial Gaussians for ``cfg``."""
    from trsplat.data.scene import init_gaussians

    s = cfg.scene
    scene = load_training_scene(cfg)
    _check_memory(s.n_random_init if s.init != "sfm" else 0)
    gaussians = init_gaussians(scene, n_random=s.n_random_init, init_box=s.init_box, seed=cfg.seed, init=s.init)
    return scene, gaussians


def _check_memory(n_gaussians: int) -> None:
    available = available_memory_bytes()
    need = n_gaussians * BYTES_PER_GAUSSIAN
    if available is not None and need > available:
        raise TrsplatError(f"--n-random-init {n_gaussians} needs about {need / 2**30:.1f} GiB of memory; "
                           f"{available / 2**30:.1f} GiB are available")


def default_hooks() -> list[Hook]:
    """What :func:`train` and :func:`resume` observe a run with unless ``hooks`` are given: the
    progress bar and the curves (``curves.json``, ``curves.png``) of every run."""
    return [ProgressBar(), TrainingCurves()]


def train(cfg: TrainConfig, *, world: World = SINGLE, **trainer_options) -> dict[str, Any]:
    """Train a new run described by ``cfg``; ``trainer_options`` go to :class:`Trainer`
    (``hooks`` default to :func:`default_hooks`). In data-parallel training every process calls
    this with the same ``cfg`` and its ``world``; rank 0 checks and writes the run folder."""
    trainer_options.setdefault("hooks", default_hooks())
    cfg.validate()
    run_dir = RunDir(cfg.out)

    def check_run_dir() -> None:
        if run_dir.has_checkpoint():
            raise TrsplatError(f"{run_dir.path} already holds a run; use --resume {run_dir.path} to continue it "
                               f"or choose another --out")
        run_dir.check_writable()

    world.from_writer(check_run_dir)
    torch.manual_seed(cfg.seed)
    scene, gaussians = prepare(cfg)
    return Trainer(cfg, scene, gaussians, world=world, **trainer_options).run()


def resume(out_dir: str | Path, changes: dict[str, Any] | None = None, *, world: World = SINGLE,
           **trainer_options) -> dict[str, Any]:
    """Continue the run in ``out_dir`` from its checkpoint; reaches the same result as an
    uninterrupted run. ``changes`` (leaf name -> value, only :data:`RESUME_EXTENDABLE`) extend it:
    more iterations, later evaluations (the schedules then span the new ``iters``). Any number of
    processes may resume a run (its ``--batch-views`` stays); rank 0 reads the run folder and
    sends the checkpoint to the others."""
    trainer_options.setdefault("hooks", default_hooks())
    run_dir = RunDir(out_dir)
    cfg, ckpt = world.from_writer(lambda: _read_run(run_dir, changes))
    cfg.out = str(run_dir.path)
    scene, gaussians = prepare(cfg)
    trainer = Trainer(cfg, scene, gaussians, world=world, **trainer_options)
    trainer.load_checkpoint(ckpt)
    return trainer.run()


def _read_run(run_dir: RunDir, changes: dict[str, Any] | None) -> tuple[TrainConfig, dict[str, Any]]:
    """The config (with ``changes``, checked) and checkpoint of the run to resume."""
    if not run_dir.has_checkpoint():
        raise TrsplatError(f"{run_dir.path}: no {RunDir.CHECKPOINT} to resume from")
    cfg = run_dir.read_config()
    cfg.validate()
    ckpt = run_dir.load_checkpoint()
    if changes:
        refused = sorted(set(changes) - set(RESUME_EXTENDABLE))
        if refused:
            raise TrsplatError(f"--resume cannot change {', '.join('--' + k.replace('_', '-') for k in refused)}; "
                               f"it may change {', '.join('--' + k.replace('_', '-') for k in RESUME_EXTENDABLE)}")
        done = ckpt.get("iteration", 0)
        if changes.get("iters", done) < done:
            raise TrsplatError(f"--iters {changes['iters']}: the run is already at iteration {done}")
        cfg = TrainConfig.from_dict({**cfg.flat(), **changes})
        cfg.validate()
        early = [i for i in cfg.eval.eval_at or [] if i <= done]
        if "eval_at" in changes and early:
            raise TrsplatError(f"--eval-at {early}: the run is already at iteration {done}")
    return cfg, ckpt
