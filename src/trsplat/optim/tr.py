"""3DGS²-TR (Algorithm 1 of arXiv 2602.00395) and ADAM-TR, in raw parameter space.

3DGS²-TR, per iteration t (spec §1.2):

1. ĝ ← θ₁ ĝ + (1 − θ₁) g                          (gradient EMA, the only momentum)
2. every ``interval`` (l) steps, on other views:  D̂ ← θ₂ D̂ + (1 − θ₂) D   (curvature EMA)
3. Δ = −ĝ / D̂ with a guard for D̂ ≤ 0 (spec §1.5):
   ``sophia`` (default) Δ = −ĝ / max(D̂, floor); ``abs`` Δ = −ĝ / max(|D̂|, floor);
   ``raw`` Δ = −ĝ / D̂ where D̂ ≠ 0, else 0.
   Always: NaN → 0 and Δ = 0 where ĝ = 0 (parameters never seen, inactive SH bands).
4. clip every coordinate to its Hellinger trust-region radius for ε(t) and apply.

``step_norm="median-radius"`` (not in the paper) rescales each tensor's Newton steps before the
clip so that their median |Δ|/radius is 1. Without it the Newton steps are 10²–10³ times longer
than the radii (``trsplat bench curvature``), so nearly every step is ±radius and D̂ has no say;
with it, the coordinates whose curvature says "stiff" move less than their radius.
``step_norm_quantile`` q moves that pivot from the median to the q-quantile: a fraction q of the
moving coordinates then lies inside its radius and the rest is clipped, so q → 0 gives back the
sign steps of the clipped Newton step and q = 0.5 is the median.

ε(t) decays exponentially (log-linear) from ``eps_start`` to ``eps_end`` over the run.
Bias correction of both EMAs is optional (off in the paper).

ADAM-TR: the 3DGS Adam step, clipped by the same radii with the same ε schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch

from trsplat.gaussians import Gaussians
from trsplat.optim.adam import GaussianAdam
from trsplat.optim.curvature import CurvatureEstimator
from trsplat.optim.hellinger import RADIUS_INPUTS, TrustRegionConfig, clip_step
from trsplat.optim.schedules import exponential_decay

GUARDS = ("sophia", "abs", "raw")
STEP_NORMS = ("none", "median-radius")
_FAR = 1e30  # a step this long is clipped to the radius in its direction for every parameter


@dataclass
class BoundStats:
    """Running count of coordinates whose step sat on the trust-region bound, per parameter name."""

    on_bound: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def add(self, mask: dict[str, torch.Tensor], moving: dict[str, torch.Tensor]) -> None:
        for name, m in mask.items():
            self.on_bound[name] = self.on_bound.get(name, 0) + int(m.sum())
            self.total[name] = self.total.get(name, 0) + int(moving[name].sum())

    def fractions(self) -> dict[str, float]:
        """Fraction of non-zero proposed steps that were clipped, per parameter name."""
        return {k: self.on_bound[k] / self.total[k] if self.total[k] else 0.0 for k in self.on_bound}

    def reset(self) -> None:
        self.on_bound.clear()
        self.total.clear()


def _clip_and_apply(params: dict[str, torch.Tensor], steps: Iterable[tuple[str, torch.Tensor]],
                    eps: float, cfg: TrustRegionConfig, stats: BoundStats) -> None:
    """Clip each proposed ``(name, step)`` to the radii at the current ``params``, then apply all.

    The steps are consumed one parameter at a time (cleaned of NaN/inf in place and released).
    Every radius is computed from the parameters before any of them moves: a clipped step is
    applied at once when no other parameter's radius reads that parameter (positions and SH
    rest, 81% of the values), and kept until the end otherwise. With a lazy ``steps`` the peak
    memory is therefore one parameter's step and temporaries plus the small deferred steps.
    """
    with torch.no_grad():
        current = {k: v.detach() for k, v in params.items()}
        deferred = {}
        for name, st in steps:
            st = torch.nan_to_num_(st, nan=0.0, posinf=0.0, neginf=0.0)
            out, on_bound = clip_step(current, {name: st}, eps, cfg)
            stats.add(on_bound, {name: st != 0})
            if any(name in RADIUS_INPUTS[other] for other in RADIUS_INPUTS if other != name):
                deferred[name] = out[name]
            else:
                params[name].add_(out[name])
            del st, out, on_bound
        for name, c in deferred.items():
            params[name].add_(c)


@torch.no_grad()
def guarded_newton_step(g_hat: torch.Tensor, d_hat: torch.Tensor, guard: str, floor: float) -> torch.Tensor:
    """Δ = −ĝ/D̂ with the guard for D̂ ≤ 0 (module docstring, step 3), NaN/inf → 0, and Δ = 0
    where ĝ = 0. Same shape as ``g_hat``; a new tensor."""
    if guard == "sophia":
        den = d_hat.clamp_min(floor)
    elif guard == "abs":
        den = d_hat.abs().clamp_min_(floor)
    else:
        den = d_hat
    step = torch.div(g_hat, den).neg_()
    del den
    if guard == "raw":
        step.masked_fill_(d_hat == 0, 0.0)
    step.masked_fill_(g_hat == 0, 0.0)
    return torch.nan_to_num_(step, nan=0.0, posinf=0.0, neginf=0.0)


def median_radius_normalised(params: dict[str, torch.Tensor], steps: Iterable[tuple[str, torch.Tensor]],
                             eps: float, cfg: TrustRegionConfig,
                             quantile: float = 0.5) -> Iterator[tuple[str, torch.Tensor]]:
    """Each ``(name, step)`` divided by the ``quantile`` over its moving coordinates of
    |step| / radius (the lower median for 0.5, as ``Tensor.median``), where the radius is the
    trust-region bound in the step's direction at ``params`` (a zero radius, e.g. a box, is left
    out). Afterwards a fraction ``quantile`` of the moving coordinates lies inside its radius.
    Lazy, like ``steps``: call it with the parameters the clip will use."""
    for name, st in steps:
        st = torch.nan_to_num_(st, nan=0.0, posinf=0.0, neginf=0.0)
        with torch.no_grad():
            far = torch.sign(st).mul_(_FAR)
            radius = clip_step(params, {name: far}, eps, cfg)[0][name].abs_()
            del far
            usable = (st != 0) & (radius > 0)
            if usable.any():
                ratios = st[usable].abs() / radius[usable]
                k = max(1, math.ceil(quantile * ratios.numel()))
                ratio = ratios.kthvalue(k).values
                if ratio > 0:
                    st.div_(ratio)
        yield name, st


def _drain(steps: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield and remove the entries of ``steps``, so each is released once it is clipped."""
    while steps:
        name = next(iter(steps))
        yield name, steps.pop(name)


class TrustRegionNewton:
    """The 3DGS²-TR optimiser over the raw tensors of a :class:`Gaussians`.

    The curvature refresh needs renders of other views; the training loop supplies them through
    ``step(iteration, context)`` where ``context.curvature_views()`` returns the views (|S₂|) and
    ``context.residual_fn`` the residual function (see :mod:`trsplat.optim.curvature`).
    """

    def __init__(self, gaussians: Gaussians, *, estimator: CurvatureEstimator, tr: TrustRegionConfig,
                 eps_start: float = 1e-6, eps_end: float = 1e-8, max_steps: int = 30_000,
                 theta1: float = 0.9, theta2: float = 0.999, interval: int = 10, guard: str = "sophia",
                 guard_floor: float = 1e-12, bias_correction: bool = False, step_norm: str = "none",
                 step_norm_quantile: float = 0.5, seed: int = 0) -> None:
        if guard not in GUARDS:
            raise ValueError(f"unknown guard {guard!r}; choose {', '.join(GUARDS)}")
        if step_norm not in STEP_NORMS:
            raise ValueError(f"unknown step_norm {step_norm!r}; choose {', '.join(STEP_NORMS)}")
        if not 0.0 < step_norm_quantile <= 1.0:
            raise ValueError(f"step_norm_quantile must lie in (0, 1], got {step_norm_quantile}")
        self.step_norm, self.step_norm_quantile = step_norm, step_norm_quantile
        self.params = gaussians.params()
        self.estimator = estimator
        self.tr = tr
        self.eps_range = (eps_start, eps_end)
        self.max_steps = max_steps
        self.theta1, self.theta2 = theta1, theta2
        self.interval = interval
        self.guard, self.guard_floor = guard, guard_floor
        self.bias_correction = bias_correction
        self.grad_ema = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.curv_ema = {k: torch.zeros_like(v) for k, v in self.params.items()}
        self.n_steps = 0
        self.n_curvature_updates = 0
        self.generator = torch.Generator().manual_seed(seed + 7919)
        self.stats = BoundStats()
        self.last_curvature_negative_fraction = 0.0

    def eps_at(self, iteration: int) -> float:
        return exponential_decay(iteration, *self.eps_range, self.max_steps)

    def needs_curvature(self, iteration: int) -> bool:
        """Algorithm 1 refreshes at t ≡ 1 (mod l): t = 1, 1 + l, 1 + 2l, ..."""
        return (iteration - 1) % self.interval == 0

    @torch.no_grad()
    def update_curvature(self, diag: dict[str, torch.Tensor]) -> None:
        negative = sum(int((d < 0).sum()) for d in diag.values())
        self.last_curvature_negative_fraction = negative / sum(d.numel() for d in diag.values())
        for k, d in diag.items():  # diag is the estimator's own: cleaned in place
            self.curv_ema[k].mul_(self.theta2).add_(torch.nan_to_num_(d), alpha=1 - self.theta2)
        self.n_curvature_updates += 1

    def newton_step(self) -> dict[str, torch.Tensor]:
        """Δ = −ĝ/D̂ with the guard, bias correction and zero/NaN rules (not yet clipped)."""
        return dict(self._newton_steps())

    @torch.no_grad()
    def _newton_steps(self) -> Iterator[tuple[str, torch.Tensor]]:
        """:meth:`newton_step` one parameter at a time."""
        c1 = 1 - self.theta1 ** self.n_steps if self.bias_correction else 1.0
        c2 = 1 - self.theta2 ** max(self.n_curvature_updates, 1) if self.bias_correction else 1.0
        for k, m in self.grad_ema.items():
            g_hat = m / c1 if self.bias_correction else m
            d_hat = self.curv_ema[k] / c2 if self.bias_correction else self.curv_ema[k]
            yield k, guarded_newton_step(g_hat, d_hat, self.guard, self.guard_floor)

    def step(self, iteration: int, context=None) -> None:
        with torch.no_grad():
            for k, p in self.params.items():
                if p.grad is not None:  # (no gradient: the EMA decays towards zero)
                    self.grad_ema[k].mul_(self.theta1).add_(torch.nan_to_num_(p.grad), alpha=1 - self.theta1)
                else:
                    self.grad_ema[k].mul_(self.theta1)
                p.grad = None  # consumed: free it before the curvature renders (peak memory)
        self.n_steps += 1
        if self.needs_curvature(iteration) and self.estimator.kind != "none":
            views = context.curvature_views(self.generator)
            diag = self.estimator.estimate({k: v.detach() for k, v in self.params.items()}, views,
                                           context.residual_fn, self.generator)
            self.update_curvature(diag)
        eps = self.eps_at(iteration)
        steps = self._newton_steps()
        if self.step_norm == "median-radius":
            steps = median_radius_normalised({k: v.detach() for k, v in self.params.items()}, steps, eps, self.tr,
                                             self.step_norm_quantile)
        _clip_and_apply(self.params, steps, eps, self.tr, self.stats)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"grad_ema": {k: v.clone() for k, v in self.grad_ema.items()},
                "curv_ema": {k: v.clone() for k, v in self.curv_ema.items()},
                "n_steps": self.n_steps, "n_curvature_updates": self.n_curvature_updates,
                "generator": self.generator.get_state(), "stats": (dict(self.stats.on_bound), dict(self.stats.total))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k in self.grad_ema:
            self.grad_ema[k].copy_(state["grad_ema"][k])
            self.curv_ema[k].copy_(state["curv_ema"][k])
        self.n_steps = state["n_steps"]
        self.n_curvature_updates = state["n_curvature_updates"]
        self.generator.set_state(state["generator"])
        self.stats = BoundStats(dict(state["stats"][0]), dict(state["stats"][1]))


class AdamTrustRegion(GaussianAdam):
    """ADAM-TR: the 3DGS Adam step, clipped coordinate-wise by the Hellinger radii for ε(t)."""

    def __init__(self, gaussians: Gaussians, *, tr: TrustRegionConfig, eps_start: float = 1e-6,
                 eps_end: float = 1e-8, **adam_kwargs) -> None:
        super().__init__(gaussians, **adam_kwargs)
        self.params = gaussians.params()
        self.tr = tr
        self.eps_range = (eps_start, eps_end)
        self.stats = BoundStats()

    def eps_at(self, iteration: int) -> float:
        return exponential_decay(iteration, *self.eps_range, self.max_steps)

    def step(self, iteration: int, context=None) -> None:
        with torch.no_grad():
            before = {k: p.detach().clone() for k, p in self.params.items()}
            super().step(iteration)
            proposed = {}
            for k, p in self.params.items():  # restore each parameter, releasing its copy
                proposed[k] = p.detach() - before[k]
                p.copy_(before.pop(k))
        _clip_and_apply(self.params, _drain(proposed), self.eps_at(iteration), self.tr, self.stats)

    def state_dict(self) -> dict[str, Any]:
        return {"adam": super().state_dict(), "stats": (dict(self.stats.on_bound), dict(self.stats.total))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state["adam"])
        self.stats = BoundStats(dict(state["stats"][0]), dict(state["stats"][1]))
