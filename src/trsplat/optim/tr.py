"""3DGS²-TR (Algorithm 1 of arXiv 2602.00395) in raw parameter space, as a torch optimizer.

Per step: gradient EMA ĝ; when due, the curvature EMA D̂ from the caller's closure; the guarded
Newton step −ĝ/D̂ (optionally rescaled, ``step_norm``); the Hellinger clip.  The algorithm, the
guards and the options: ``docs/optimizer.md``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

from trsplat.optim.curvature import CURVATURES
from trsplat.optim.trust_region import HellingerTrustRegion, WithTrustRegion, group_eps, named_params

GUARDS = ("sophia", "abs", "raw")
STEP_NORMS = ("none", "median-radius")

CurvatureClosure = Callable[[torch.Generator], dict[str, Tensor]]
"""``closure(generator) -> {name: D}``: a curvature-diagonal estimate shaped like each parameter."""


@torch.no_grad()
def guarded_newton_step(g_hat: Tensor, d_hat: Tensor, guard: str, floor: float) -> Tensor:
    """Δ = −ĝ/D̂ with the guard for D̂ ≤ 0 (``sophia``: max(D̂, floor); ``abs``: max(|D̂|, floor);
    ``raw``: 0 where D̂ = 0), NaN/inf → 0, and Δ = 0 where ĝ = 0. Same shape as ``g_hat``; a new
    tensor."""
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


class TrustRegionNewton(WithTrustRegion, torch.optim.Optimizer):
    """The 3DGS²-TR optimizer: one param group per entry of ``params`` (key ``"name"``).

    Group hyperparameters (``defaults``): ``tr_eps`` (ε; a scheduler sets it per step), ``theta1``,
    ``theta2``, ``guard``, ``guard_floor``, ``bias_correction``, ``step_norm``,
    ``step_norm_quantile``.  Per-parameter state: ``grad_ema`` and ``curv_ema`` (shaped like the
    parameter), ``step`` and ``curvature_updates`` (ints); ``state["generator"]`` holds the state
    of the generator handed to the curvature closure (seeded with ``seed + 7919``).
    ``curvature`` names the estimator the caller's closure runs (``"none"``: never called, D̂ = 0);
    it is refreshed at steps t ≡ 1 (mod ``interval``), t = 1, 2, ... counting this optimizer's steps.
    """

    def __init__(self, params: dict[str, Tensor], *, trust_region: HellingerTrustRegion | None = None,
                 tr_eps: float = 1e-6, curvature: str = "hutchinson", interval: int = 10, theta1: float = 0.9,
                 theta2: float = 0.999, guard: str = "sophia", guard_floor: float = 1e-12,
                 bias_correction: bool = False, step_norm: str = "none", step_norm_quantile: float = 0.5,
                 seed: int = 0) -> None:
        if guard not in GUARDS:
            raise ValueError(f"unknown guard {guard!r}; choose {', '.join(GUARDS)}")
        if step_norm not in STEP_NORMS:
            raise ValueError(f"unknown step_norm {step_norm!r}; choose {', '.join(STEP_NORMS)}")
        if not 0.0 < step_norm_quantile <= 1.0:
            raise ValueError(f"step_norm_quantile must lie in (0, 1], got {step_norm_quantile}")
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature estimator {curvature!r}; choose {', '.join(CURVATURES)}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        defaults = dict(tr_eps=tr_eps, theta1=theta1, theta2=theta2, guard=guard, guard_floor=guard_floor,
                        bias_correction=bias_correction, step_norm=step_norm, step_norm_quantile=step_norm_quantile)
        super().__init__([{"params": [p], "name": name} for name, p in params.items()], defaults)
        self.trust_region = HellingerTrustRegion() if trust_region is None else trust_region
        self.curvature = curvature
        self.interval = interval
        # optimizer-wide, not a parameter's: the base class saves and restores it uncast
        self.state["generator"] = torch.Generator().manual_seed(seed + 7919).get_state()

    @torch.no_grad()
    def step(self, closure: CurvatureClosure | None = None) -> None:
        """One step from the gradients in ``.grad`` (consumed: set to None before the closure runs).

        ``closure(generator)`` returns the curvature diagonal ``{name: D}``; it is called (with
        grad mode on) only when a refresh is due and ``curvature`` is not ``"none"``, and must
        then be given.  Unlike a usual torch closure it computes no loss.
        """
        t = 0
        for group in self.param_groups:
            (p,) = group["params"]
            state = self.state[p]
            if not state:
                state.update(step=0, curvature_updates=0, grad_ema=torch.zeros_like(p),
                             curv_ema=torch.zeros_like(p))
            theta1 = group["theta1"]
            if p.grad is not None:  # (no gradient: the EMA decays towards zero)
                state["grad_ema"].mul_(theta1).add_(torch.nan_to_num_(p.grad), alpha=1 - theta1)
            else:
                state["grad_ema"].mul_(theta1)
            p.grad = None  # consumed: free it before the curvature renders (peak memory)
            state["step"] += 1
            t = state["step"]  # (every parameter steps together)
        if self.curvature != "none" and (t - 1) % self.interval == 0:
            if closure is None:
                raise ValueError(f"step {t}: a curvature refresh is due; pass the curvature closure")
            generator = torch.Generator()
            generator.set_state(self.state["generator"])
            with torch.enable_grad():
                diag = closure(generator)
            self.state["generator"] = generator.get_state()
            self._update_curvature(diag)
        eps = group_eps(self.param_groups)
        params = named_params(self.param_groups)
        current = {k: v.detach() for k, v in params.items()}
        self.trust_region.clip_and_apply(params, self._newton_steps(current, eps), eps)

    def _update_curvature(self, diag: dict[str, Tensor]) -> None:
        """D̂ ← θ₂ D̂ + (1 − θ₂) D, NaN → 0 (``diag`` is the estimator's own: cleaned in place)."""
        for group in self.param_groups:
            (p,) = group["params"]
            d = diag[group["name"]]
            if d.shape != p.shape:
                raise ValueError(f"curvature {group['name']!r} has shape {tuple(d.shape)}, expected {tuple(p.shape)}")
            state = self.state[p]
            state["curv_ema"].mul_(group["theta2"]).add_(torch.nan_to_num_(d), alpha=1 - group["theta2"])
            state["curvature_updates"] += 1

    def _newton_steps(self, current: dict[str, Tensor], eps: float) -> Iterator[tuple[str, Tensor]]:
        """``(name, Δ)`` one parameter at a time: the guarded Newton step with the bias correction
        and, for ``step_norm="median-radius"``, scaled so that the ``step_norm_quantile`` of
        |Δ|/radius at ``current`` is 1 (``docs/optimizer.md``)."""
        for group in self.param_groups:
            (p,) = group["params"]
            state = self.state[p]
            g_hat, d_hat = state["grad_ema"], state["curv_ema"]
            if group["bias_correction"]:
                g_hat = g_hat / (1 - group["theta1"] ** state["step"])
                d_hat = d_hat / (1 - group["theta2"] ** max(state["curvature_updates"], 1))
            step = guarded_newton_step(g_hat, d_hat, group["guard"], group["guard_floor"])
            del g_hat, d_hat
            if group["step_norm"] == "median-radius":
                step = self.trust_region.scale_to_radius(current, group["name"], step, eps,
                                                         group["step_norm_quantile"])
            yield group["name"], step
