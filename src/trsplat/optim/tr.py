"""3DGS²-TR (Algorithm 1 of arXiv 2602.00395) in raw parameter space, as a torch optimizer.

Per step: gradient EMA ĝ; when due, the curvature EMA D̂ from the caller's closure; the guarded
Newton step −ĝ/D̂ (optionally rescaled, ``step_norm``); the Hellinger clip.  The algorithm, the
guards and the options: ``docs/optimizer.md``.
"""

from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from torch import Tensor

from trsplat.optim.curvature import CURVATURES
from trsplat.optim.radius import RADIUS_MODES, SCALE_MAX, AdaptiveRadius, StepLoss
from trsplat.optim.trust_region import HellingerTrustRegion, WithTrustRegion, group_eps, named_params

GUARDS = ("sophia", "abs", "raw")
STEP_NORMS = ("none", "median-radius")
OPACITY_STEPS = ("newton", "adam")
STEP_RULES = ("newton", "adam")
OPACITY = "opacity_logits"

CurvatureClosure = Callable[[torch.Generator], dict[str, Tensor]]
"""``closure(generator) -> {name: D}``: a curvature-diagonal estimate shaped like each parameter."""


@torch.no_grad()
def guarded_newton_step(g_hat: Tensor, d_hat: Tensor | None, guard: str, floor: float) -> Tensor:
    """Δ = −ĝ/D̂ with the guard for D̂ ≤ 0 (``sophia``: max(D̂, floor); ``abs``: max(|D̂|, floor);
    ``raw``: 0 where D̂ = 0), NaN/inf → 0, and Δ = 0 where ĝ = 0. ``d_hat=None`` means D̂ = 0
    everywhere (``curvature="none"``, which keeps no curvature tensor). Same shape as ``g_hat``;
    a new tensor. CPU float tensors go through one numba pass (:mod:`trsplat.optim.newton_cpu`)."""
    if g_hat.device.type == "cpu":
        from trsplat.optim import newton_cpu  # imports numba on first use

        if newton_cpu.applies(g_hat, d_hat):
            return newton_cpu.newton_step_cpu(g_hat, d_hat, guard, floor)
    return guarded_newton_step_torch(g_hat, d_hat, guard, floor)


@torch.no_grad()
def guarded_newton_step_torch(g_hat: Tensor, d_hat: Tensor | None, guard: str, floor: float) -> Tensor:
    """The torch reference of :func:`guarded_newton_step` (any device); the CPU kernel of
    :mod:`trsplat.optim.newton_cpu` returns the same bits."""
    if d_hat is None:
        d_hat = torch.zeros_like(g_hat)
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
    parameter; no ``curv_ema`` with ``curvature="none"``), ``step`` and ``curvature_updates``
    (ints); ``state["generator"]`` holds the state of the generator handed to the curvature
    closure (seeded with ``seed + 7919``).
    ``curvature`` names the estimator the caller's closure runs (``"none"``: never called, D̂ = 0);
    it is refreshed at steps t ≡ 1 (mod ``interval``), t = 1, 2, ... counting this optimizer's steps.
    ``radius="adaptive"`` multiplies ε by the factor κ of :attr:`radius_control` (an
    :class:`~trsplat.optim.radius.AdaptiveRadius`, ratio test every ``radius_test_every`` steps;
    its state travels in ``state_dict`` under ``"adaptive_radius"``); ``"fixed"`` (the paper) uses
    ε as scheduled and has ``radius_control = None``. The adaptive radius's options
    (``radius_test_on``, ``radius_held_out_views``, ``radius_scale_max``, ``radius_scale_min`` (its ``scale_floor``),
    ``radius_opacity_scale_max``, ``damping``) are those of
    :class:`~trsplat.optim.radius.AdaptiveRadius` (``test_on``, ``held_out_views``, ...).
    ``step_rule="adam"`` (not the paper; needs ``curvature="none"``) replaces the Newton step of
    every group that the trust region clips by Adam's normalised step −m̂/(√v̂ + ``adam_eps``), each
    coordinate capped at 1 in size, times the bound in its direction: where the gradient's sign is
    noisy the step is shorter than the radius, where the Newton step with D̂ = 0 always reaches it.
    ``opacity_step="adam"`` (not the paper) gives the ``opacity_logits`` group Adam's step instead:
    −``opacity_lr``·m̂/(√v̂ + ``adam_eps``), m the gradient EMA (θ₁), v the squared-gradient EMA
    ``exp_avg_sq`` (θ₂), both bias-corrected, applied outside the trust region
    (``docs/densification.md``, session 19).
    """

    def __init__(self, params: dict[str, Tensor], *, trust_region: HellingerTrustRegion | None = None,
                 tr_eps: float = 1e-6, curvature: str = "hutchinson", interval: int = 10, theta1: float = 0.9,
                 theta2: float = 0.999, guard: str = "sophia", guard_floor: float = 1e-12,
                 bias_correction: bool = False, step_norm: str = "none", step_norm_quantile: float = 0.5,
                 seed: int = 0, radius: str = "fixed", radius_test_every: int = 10, radius_test_on: str = "step",
                 radius_held_out_views: int = 1, radius_scale_max: float = SCALE_MAX,
                 radius_opacity_scale_max: float | None = None, damping: str = "none",
                 radius_scale_min: float | None = None, opacity_step: str = "newton", opacity_lr: float = 0.025,
                 adam_eps: float = 1e-15, step_rule: str = "newton") -> None:
        if guard not in GUARDS:
            raise ValueError(f"unknown guard {guard!r}; choose {', '.join(GUARDS)}")
        if step_norm not in STEP_NORMS:
            raise ValueError(f"unknown step_norm {step_norm!r}; choose {', '.join(STEP_NORMS)}")
        if not 0.0 < step_norm_quantile <= 1.0:
            raise ValueError(f"step_norm_quantile must lie in (0, 1], got {step_norm_quantile}")
        if opacity_step not in OPACITY_STEPS:
            raise ValueError(f"unknown opacity_step {opacity_step!r}; choose {', '.join(OPACITY_STEPS)}")
        if step_rule not in STEP_RULES:
            raise ValueError(f"unknown step_rule {step_rule!r}; choose {', '.join(STEP_RULES)}")
        if step_rule == "adam" and (curvature != "none" or step_norm != "none"):
            raise ValueError("step_rule 'adam' takes no Newton step: use curvature='none' and step_norm='none'")
        if curvature not in CURVATURES:
            raise ValueError(f"unknown curvature estimator {curvature!r}; choose {', '.join(CURVATURES)}")
        if interval < 1:
            raise ValueError(f"interval must be >= 1, got {interval}")
        if radius not in RADIUS_MODES:
            raise ValueError(f"unknown radius mode {radius!r}; choose {', '.join(RADIUS_MODES)}")
        defaults = dict(tr_eps=tr_eps, theta1=theta1, theta2=theta2, guard=guard, guard_floor=guard_floor,
                        bias_correction=bias_correction, step_norm=step_norm, step_norm_quantile=step_norm_quantile)
        super().__init__([{"params": [p], "name": name} for name, p in params.items()], defaults)
        self.trust_region = HellingerTrustRegion() if trust_region is None else trust_region
        self.curvature = curvature
        self.interval = interval
        self.opacity_step, self.opacity_lr, self.adam_eps = opacity_step, opacity_lr, adam_eps
        self.step_rule = step_rule
        if radius != "adaptive" and damping != "none":
            raise ValueError(f"damping {damping!r} is tied to the adaptive radius's ratio test; use radius='adaptive'")
        self.radius_control = AdaptiveRadius(
            radius_test_every, test_on=radius_test_on, held_out_views=radius_held_out_views,
            scale_max=radius_scale_max, opacity_scale_max=radius_opacity_scale_max, damping=damping,
            scale_floor=radius_scale_min,
            seed=seed) if radius == "adaptive" else None
        self._pending_slope: dict | None = None  # a next-slope test waiting for the next gradient
        # optimizer-wide, not a parameter's: the base class saves and restores it uncast
        self.state["generator"] = torch.Generator().manual_seed(seed + 7919).get_state()

    @torch.no_grad()
    def step(self, closure: CurvatureClosure | None = None, step_loss: StepLoss | None = None) -> None:
        """One step from the gradients in ``.grad`` (consumed: set to None before the closure runs).

        ``closure(generator)`` returns the curvature diagonal ``{name: D}``; it is called (with
        grad mode on) only when a refresh is due and ``curvature`` is not ``"none"``, and must
        then be given.  Unlike a usual torch closure it computes no loss.  ``step_loss`` (the
        loss of the gradient's views before the step and a callable for it after) is used only
        by the adaptive radius, when its ratio test is due (:meth:`ratio_test_due`), and must then
        be given.
        """
        t = self._fold_gradients_step_count()
        control = self.radius_control
        self._finish_slope_test()
        testing = control is not None and control.due(t)
        slope = testing and control.test_on == "next-slope"
        if testing and step_loss is None and not slope:
            raise ValueError(f"step {t}: a ratio test of the adaptive radius is due; pass step_loss")
        grads: dict[str, Tensor] = {}
        for group in self.param_groups:
            (p,) = group["params"]
            if testing and p.grad is not None and control.test_on != "held-out":  # the step's own gradient
                grads[group["name"]] = p.grad
            p.grad = None  # consumed: free it before the curvature renders (peak memory)
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
        eps_of = self._adaptive_eps_of(eps)
        if control is not None:
            eps = eps * control.scale
        params = named_params(self.param_groups)
        current = {k: v.detach() for k, v in params.items()}
        if not testing:
            self.trust_region.clip_and_apply(params, self._newton_steps(current, eps), eps, eps_of=eps_of,
                                             unclipped=self._unclipped)
            return
        model = _ModelDecrease(grads if control.test_on != "held-out" else self._model_gradient(),
                               self._model_curvature(), keep_steps=slope)
        self.trust_region.clip_and_apply(params, self._newton_steps(current, eps), eps, observe=model.observe,
                                         eps_of=eps_of, unclipped=self._unclipped)
        del grads, current
        if slope:  # finished at the next step, with its gradient
            self._pending_slope = {"steps": model.steps, "linear": model.linear, "bound_share": model.bound_share()}
            return
        assert step_loss is not None and control is not None
        control.update(model.predicted, step_loss.before - float(step_loss.after()), model.bound_share())

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.radius_control is not None:
            state["adaptive_radius"] = self.radius_control.state_dict()
            if self._pending_slope is not None:
                state["adaptive_radius_pending"] = self._pending_slope
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        radius = state_dict.pop("adaptive_radius", None)
        self._pending_slope = state_dict.pop("adaptive_radius_pending", None)
        if (radius is None) != (self.radius_control is None):
            raise ValueError("the state_dict's radius mode (adaptive or fixed) differs from this optimizer's")
        super().load_state_dict(state_dict)
        if self.radius_control is not None:
            self.radius_control.load_state_dict(radius)

    def ratio_test_due(self) -> bool:
        """Whether the next :meth:`step` runs the adaptive radius's ratio test (needs ``step_loss``)."""
        if self.radius_control is None or self.radius_control.test_on == "next-slope":
            return False
        p = self.param_groups[0]["params"][0]
        return self.radius_control.due(self.state[p].get("step", 0) + 1 if p in self.state else 1)

    def _fold_gradients_step_count(self) -> int:
        """ĝ ← θ₁ ĝ + (1 − θ₁) g for every parameter (leaving ``.grad`` in place); returns t."""
        t = 0
        for group in self.param_groups:
            (p,) = group["params"]
            state = self.state[p]
            if not state:
                state.update(step=0, curvature_updates=0, grad_ema=torch.zeros_like(p))
                if self.curvature != "none":  # (D̂ = 0 needs no tensor)
                    state["curv_ema"] = torch.zeros_like(p)
            theta1 = group["theta1"]
            adam = self._takes_adam_step(group) or self.step_rule == "adam"  # (keeps v)
            if adam and "exp_avg_sq" not in state:
                state["exp_avg_sq"] = torch.zeros_like(p)
            if p.grad is not None:  # (no gradient: the EMAs decay towards zero)
                g = torch.nan_to_num_(p.grad)
                state["grad_ema"].mul_(theta1).add_(g, alpha=1 - theta1)
                if adam:
                    state["exp_avg_sq"].mul_(group["theta2"]).addcmul_(g, g, value=1 - group["theta2"])
            else:
                state["grad_ema"].mul_(theta1)
                if adam:
                    state["exp_avg_sq"].mul_(group["theta2"])
            state["step"] += 1
            t = state["step"]  # (every parameter steps together)
        return t

    def _finish_slope_test(self) -> None:
        """``test_on="next-slope"``: the test of the previous step, from this step's raw gradients
        g' (still in ``.grad``): d₁ = g'·s, ρ = (1 + d₁/d₀)/2 passed to the rule as predicted −d₀
        and actual (−d₀ − d₁)/2; skipped when a parameter's shape changed (densification)."""
        pending, self._pending_slope = self._pending_slope, None
        if pending is None or self.radius_control is None:
            return
        d1 = 0.0
        for group in self.param_groups:
            (p,) = group["params"]
            s = pending["steps"].get(group["name"])
            if s is None or p.grad is None:
                continue
            if s.shape != p.shape:
                d1 = math.nan  # the rule counts it as skipped
                break
            d1 += float((torch.nan_to_num(p.grad.double()) * s.double()).sum())
        d0 = pending["linear"]
        self.radius_control.update(-d0, (-d0 - d1) / 2, pending["bound_share"])

    def _adaptive_eps_of(self, eps: float) -> dict[str, float] | None:
        """ε per parameter where the adaptive radius gives it another factor than κ: opacity's
        min(κ, ``opacity_scale_max``) (None when every parameter uses κ·ε)."""
        control = self.radius_control
        if control is None or control.opacity_scale_max is None:
            return None
        return {"opacity_logits": eps * control.opacity_scale()}

    def _corrected(self, group: dict) -> tuple[Tensor, Tensor | None]:
        """(ĝ, D̂) of a param group as the Newton step reads them: the EMAs, bias-corrected when
        that is on; D̂ is None without a curvature estimator (D̂ = 0)."""
        state = self.state[group["params"][0]]
        g_hat, d_hat = state["grad_ema"], state.get("curv_ema")
        if group["bias_correction"]:
            g_hat = g_hat / (1 - group["theta1"] ** state["step"])
            if d_hat is not None:
                d_hat = d_hat / (1 - group["theta2"] ** max(state["curvature_updates"], 1))
        return g_hat, d_hat

    def _model_gradient(self) -> dict[str, Tensor]:
        """g of a held-out ratio test's model: the gradient EMA ĝ as the Newton step reads it,
        the model of the whole training loss."""
        return {group["name"]: self._corrected(group)[0] for group in self.param_groups}

    def _damped(self, d_hat: Tensor | None) -> Tensor | None:
        """D̂ as the Newton step divides by it: Levenberg–Marquardt damped with ``damping="lm"``."""
        control = self.radius_control
        if control is None or control.damping != "lm":
            return d_hat
        return control.lm_damping(d_hat)

    def _model_curvature(self) -> dict[str, Tensor | None]:
        """D of the ratio test's model per parameter: the curvature EMA as the Newton step reads
        it, unscaled (None: D = 0); D⁺ = max(D, 0) is taken when summing."""
        return {group["name"]: self._corrected(group)[1] for group in self.param_groups}

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
            if self._takes_adam_step(group):
                yield OPACITY, self._adam_step(group)
                continue
            if self.step_rule == "adam":
                u = self._adam_direction(group).clamp_(-1.0, 1.0)
                yield group["name"], self.trust_region.bound_along(current, group["name"], u.neg(), eps).mul_(u.abs_())
                continue
            g_hat, d_hat = self._corrected(group)
            step = guarded_newton_step(g_hat, self._damped(d_hat), group["guard"], group["guard_floor"])
            del g_hat, d_hat
            if group["step_norm"] == "median-radius":
                step = self.trust_region.scale_to_radius(current, group["name"], step, eps,
                                                         group["step_norm_quantile"])
            yield group["name"], step

    @property
    def _unclipped(self) -> tuple[str, ...]:
        """Parameters the trust region applies unclipped: the opacity logits on Adam's step, and
        every parameter under ``step_rule="adam"`` (its steps lie within the bound by construction)."""
        if self.step_rule == "adam":
            return tuple(group["name"] for group in self.param_groups)
        return (OPACITY,) if self.opacity_step == "adam" else ()

    def _takes_adam_step(self, group: dict) -> bool:
        return self.opacity_step == "adam" and group["name"] == OPACITY

    def _adam_step(self, group: dict) -> Tensor:
        """Adam's step −lr·m̂/(√v̂ + eps) of ``group`` from its EMAs."""
        return self._adam_direction(group).mul_(-self.opacity_lr)

    def _adam_direction(self, group: dict) -> Tensor:
        """m̂/(√v̂ + eps) of ``group`` from its EMAs, both bias-corrected (a new tensor)."""
        state = self.state[group["params"][0]]
        t = state["step"]
        denom = (state["exp_avg_sq"] / (1 - group["theta2"] ** t)).sqrt_().add_(self.adam_eps)
        return (state["grad_ema"] / (1 - group["theta1"] ** t)).div_(denom)


class _ModelDecrease:
    """Sums the predicted decrease −(g·s + ½ s·D⁺s) of the clipped steps ``s`` as the trust region
    applies them (``g``: the step's gradient, 0 where a parameter had none; ``D⁺ = max(D, 0)``),
    in float64, and the share of moving coordinates on the bound; ``linear`` is Σ g·s alone, and
    with ``keep_steps`` a copy of each clipped step is kept in ``steps``."""

    def __init__(self, grads: dict[str, Tensor], curvature: dict[str, Tensor | None], keep_steps: bool = False) -> None:
        self.grads, self.curvature = grads, curvature
        self.keep_steps = keep_steps
        self.steps: dict[str, Tensor] = {}
        self.linear = 0.0
        self.predicted = 0.0
        self.on_bound = 0
        self.moving = 0

    def observe(self, name: str, step: Tensor, on_bound: Tensor, moving: Tensor) -> None:
        s = step.double()
        g = self.grads.pop(name, None)
        linear = float((torch.nan_to_num(g.double()) * s).sum()) if g is not None else 0.0
        d = self.curvature[name]
        quadratic = float((d.double().clamp_min(0.0) * s * s).sum()) if d is not None else 0.0
        self.predicted -= linear + 0.5 * quadratic
        self.linear += linear
        if self.keep_steps:
            self.steps[name] = step.detach().clone()
        self.on_bound += int(torch.count_nonzero(on_bound))
        self.moving += int(torch.count_nonzero(moving))

    def bound_share(self) -> float:
        return self.on_bound / self.moving if self.moving else 0.0
