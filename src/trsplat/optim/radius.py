"""The adaptive trust-region radius of 3DGS²-TR (``--tr-radius adaptive``): a classic ratio test.

The Hellinger radii keep their shape per parameter type; one global factor κ multiplies the
scheduled ε(t), so the clip uses κ·ε(t) (every radius grows or shrinks roughly as √κ). Every
``test_every`` steps the optimizer measures

    ρ = actual decrease / predicted decrease

of the training loss of the step's own view(s): the actual decrease is the loss before the step
minus the loss after it (one extra forward render, supplied by the caller as a :class:`StepLoss`),
the predicted one is −m(s) of the diagonal model m(s) = g·s + ½ s·D⁺s, with g the step's own
gradient (the gradient of exactly the loss that is measured), D⁺ = max(D̂, 0) the curvature EMA
(D̂ = 0 for ``--curvature none``: a linear model) and s the applied (clipped) step. Then
κ ← κ·``SHRINK`` when ρ < ``SHRINK_BELOW``; κ ← κ·``GROW`` when ρ > ``GROW_ABOVE`` and at least
``BOUND_SHARE`` of the moving coordinates sat on the bound; κ is kept in [``SCALE_MIN``,
``SCALE_MAX``]. Steps are never undone (that would cost a copy of every parameter). Rule,
constants and measurements: ``docs/optimizer.md`` ("The adaptive radius").

Options beyond that rule (each named, defaults = the rule above): ``test_on="held-out"`` measures
the actual decrease on training view(s) the step was not taken on, drawn with this object's own
generator, and predicts with the gradient EMA ĝ (the model of the whole training loss) instead
of the step's gradient; ``scale_max`` and ``scale_floor`` (κ ∈ [``scale_floor`` or 1/scale_max,
scale_max]); ``opacity_scale_max``
(the opacity radius uses min(κ, opacity_scale_max)); ``damping="lm"`` (Levenberg–Marquardt:
the Newton step divides by max(D̂, 0) + μ·mean(max(D̂, 0)) per tensor, μ ×``LM_GROW`` when κ
shrinks, ×``LM_DECAY`` when ρ > ``GROW_ABOVE``, μ ∈ [``LM_MIN``, ``LM_MAX``], starting at
``LM_START``). ``test_on="next-slope"`` needs no render: on a test step it keeps the applied
step s and d₀ = g·s (the step's own gradient g), and at the next step, with that step's raw gradient
g' (another view, at the new parameters), sets q = g'·s / d₀ and ρ = (1 + q)/2, the value a
quadratic along s would give; κ shrinks when ρ < ``SLOPE_THRESHOLD`` and grows above it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

RADIUS_MODES = ("fixed", "adaptive")
TEST_VIEWS = ("step", "held-out", "next-slope")
"""Where the ratio test measures: the step's own view(s), other training view(s), or the slope of
the next step's view at the end of the step (no render)."""
DAMPINGS = ("none", "lm")
"""Damping of the Newton step tied to the ratio test: none, or Levenberg–Marquardt."""

SHRINK_BELOW = 0.25
"""ρ below this: the model over-promised, κ shrinks."""
GROW_ABOVE = 0.75
"""ρ above this (with the step on the bound): the model held, κ grows."""
SHRINK = 0.5
"""Factor on κ (so about 1/√2 on every radius) when ρ < ``SHRINK_BELOW``."""
GROW = 2.0
"""Factor on κ (about √2 on every radius) when ρ > ``GROW_ABOVE`` and the step was on the bound."""
BOUND_SHARE = 0.5
"""A step is "on the bound" when at least this share of its moving coordinates was clipped."""
SCALE_MIN = 2.0 ** -10
SCALE_MAX = 2.0 ** 10
"""κ stays in [2⁻¹⁰, 2¹⁰] (radii about 1/32 to 32 times the scheduled ones) unless ``scale_max``
says otherwise."""
LM_START = 1.0
"""μ at the first step: the damping λ = μ·mean(D⁺) of each tensor starts at its mean curvature."""
LM_GROW = 2.0
"""Factor on μ when a test shrinks κ (the model over-promised: lean towards a gradient step)."""
LM_DECAY = 0.5
"""Factor on μ when ρ > ``GROW_ABOVE`` (the model held: trust the curvature more)."""
LM_MIN = 2.0 ** -10
LM_MAX = 2.0 ** 10
"""μ stays in [2⁻¹⁰, 2¹⁰]."""
SLOPE_THRESHOLD = 0.5
"""``test_on="next-slope"``: ρ = (1 + q)/2 with q the slope ratio; κ shrinks below this value
(q < 0: the next view's loss rises along the step at its end, the step overshot) and grows above
it (q > 0: still descending), instead of ``SHRINK_BELOW`` / ``GROW_ABOVE``."""
HELD_OUT_SEED_OFFSET = 104_729
"""The held-out views' generator is seeded with ``seed + HELD_OUT_SEED_OFFSET`` (apart from the
curvature's ``seed + 7919``, so the curvature probes do not depend on the test's draws)."""


@dataclass(frozen=True)
class StepLoss:
    """What the caller gives the optimizer for a ratio test: ``before``, the training loss of the
    step's view(s) at the parameters the gradient was taken at, and ``after()``, the same loss
    of the same view(s) at the current parameters (called once, right after the step)."""

    before: float
    after: Callable[[], float]


@dataclass
class RatioTestWindow:
    """Counts of the ratio tests since the last :meth:`AdaptiveRadius.window_statistics` reset."""

    tests: int = 0
    skipped: int = 0          # predicted decrease <= 0 (or not finite): no information, κ unchanged
    accepted: int = 0         # ρ > 0: the view's loss went down, as the model predicted
    shrinks: int = 0
    grows: int = 0
    rho_sum: float = 0.0      # over the tests that were not skipped
    log2_scale_sum: float = 0.0  # log2 κ after each test (skipped included)
    log2_damping_sum: float = 0.0  # log2 μ after each test (``damping="lm"`` only)


@dataclass
class AdaptiveRadius:
    """The factor κ on ε and its ratio-test rule (module docstring); state in ``state_dict``."""

    test_every: int = 10
    scale: float = 1.0
    window: RatioTestWindow = field(default_factory=RatioTestWindow)
    last_rho: float | None = None
    test_on: str = "step"
    held_out_views: int = 1
    scale_max: float = SCALE_MAX
    opacity_scale_max: float | None = None
    scale_floor: float | None = None
    damping: str = "none"
    damping_factor: float = LM_START
    seed: int = 0
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        if self.test_every < 1:
            raise ValueError(f"test_every must be >= 1, got {self.test_every}")
        if self.test_on not in TEST_VIEWS:
            raise ValueError(f"unknown ratio-test views {self.test_on!r}; choose {', '.join(TEST_VIEWS)}")
        if self.held_out_views < 1:
            raise ValueError(f"held_out_views must be >= 1, got {self.held_out_views}")
        if not (math.isfinite(self.scale_max) and self.scale_max >= 1):
            raise ValueError(f"scale_max must be finite and >= 1, got {self.scale_max}")
        if self.scale_floor is not None and not 0 < self.scale_floor <= 1:
            raise ValueError(f"scale_floor must lie in (0, 1] or be None, got {self.scale_floor}")
        if self.opacity_scale_max is not None and not self.opacity_scale_max > 0:
            raise ValueError(f"opacity_scale_max must be > 0 or None, got {self.opacity_scale_max}")
        if self.damping not in DAMPINGS:
            raise ValueError(f"unknown damping {self.damping!r}; choose {', '.join(DAMPINGS)}")
        if self.test_on == "held-out" and self.generator is None:
            self.generator = torch.Generator().manual_seed(self.seed + HELD_OUT_SEED_OFFSET)

    @property
    def scale_min(self) -> float:
        """The lower bound of κ: ``scale_floor``, or 1/``scale_max`` when that is None."""
        return 1.0 / self.scale_max if self.scale_floor is None else self.scale_floor

    def due(self, step: int) -> bool:
        """A test at steps t ≡ 0 (mod ``test_every``) (never with a curvature refresh at
        t ≡ 1 (mod l) when l = ``test_every`` > 1)."""
        return step % self.test_every == 0

    def opacity_scale(self) -> float:
        """The factor on the opacity budget: κ, or min(κ, ``opacity_scale_max``)."""
        return self.scale if self.opacity_scale_max is None else min(self.scale, self.opacity_scale_max)

    def lm_damping(self, curvature: Tensor) -> Tensor:
        """``damping="lm"``: max(D, 0) + μ·mean(max(D, 0)) over the tensor (a new tensor, the
        curvature the Newton step divides by). With no positive curvature (λ = 0) D is returned
        as it is, so the guard of the Newton step still applies."""
        positive = curvature.clamp_min(0.0)
        lam = float(positive.double().mean()) * self.damping_factor if positive.numel() else 0.0
        if not (lam > 0 and math.isfinite(lam)):
            return curvature
        return positive.add_(lam)

    def draw_views(self, n_views: int, exclude: list[int]) -> list[int]:
        """``test_on="held-out"``: ``held_out_views`` distinct training view indices in [0,
        ``n_views``), none of ``exclude`` when enough others exist (uniform, this object's
        generator)."""
        assert self.generator is not None
        pool = [i for i in range(n_views) if i not in exclude] or list(range(n_views))
        order = torch.randperm(len(pool), generator=self.generator).tolist()
        return [pool[i] for i in order[:self.held_out_views]]

    def update(self, predicted: float, actual: float, bound_share: float) -> float | None:
        """Apply the rule for one test; returns ρ (None when the test was skipped)."""
        w = self.window
        w.tests += 1
        rho: float | None = None
        if predicted > 0 and math.isfinite(predicted) and math.isfinite(actual):
            rho = actual / predicted
            w.rho_sum += rho
            w.accepted += rho > 0
            shrink_below, grow_above = (SLOPE_THRESHOLD, SLOPE_THRESHOLD) if self.test_on == "next-slope" \
                else (SHRINK_BELOW, GROW_ABOVE)
            if rho < shrink_below:
                self.scale = max(self.scale * SHRINK, self.scale_min)
                if self.damping == "lm":
                    self.damping_factor = min(self.damping_factor * LM_GROW, LM_MAX)
                w.shrinks += 1
            else:
                if rho > grow_above and self.damping == "lm":
                    self.damping_factor = max(self.damping_factor * LM_DECAY, LM_MIN)
                if rho > grow_above and bound_share >= BOUND_SHARE:
                    self.scale = min(self.scale * GROW, self.scale_max)
                    w.grows += 1
        else:
            w.skipped += 1
        w.log2_scale_sum += math.log2(self.scale)
        w.log2_damping_sum += math.log2(self.damping_factor)
        self.last_rho = rho
        return rho

    def window_statistics(self) -> dict[str, Any]:
        """The ratio-test record of ``metrics.json`` for the tests since the last reset: ``scale``
        (κ now), ``scale_mean`` (geometric mean of κ after each test), ``tests``, ``skipped``,
        ``rho_mean`` (over the tests not skipped), ``accept_fraction`` (ρ > 0), ``shrink_fraction``
        and ``grow_fraction`` (of the tests not skipped); None where there was no test. With
        ``damping="lm"`` also ``damping`` (μ now) and ``damping_mean`` (geometric mean)."""
        w = self.window
        used = w.tests - w.skipped
        stats = {
            "scale": self.scale,
            "scale_mean": 2.0 ** (w.log2_scale_sum / w.tests) if w.tests else None,
            "tests": w.tests, "skipped": w.skipped,
            "rho_mean": w.rho_sum / used if used else None,
            "accept_fraction": w.accepted / used if used else None,
            "shrink_fraction": w.shrinks / used if used else None,
            "grow_fraction": w.grows / used if used else None,
        }
        if self.damping == "lm":
            stats["damping"] = self.damping_factor
            stats["damping_mean"] = 2.0 ** (w.log2_damping_sum / w.tests) if w.tests else None
        return stats

    def reset_window(self) -> None:
        self.window = RatioTestWindow()

    def state_dict(self) -> dict[str, Any]:
        w = self.window
        state: dict[str, Any] = {
            "scale": self.scale, "last_rho": self.last_rho,
            "window": {"tests": w.tests, "skipped": w.skipped, "accepted": w.accepted, "shrinks": w.shrinks,
                       "grows": w.grows, "rho_sum": w.rho_sum, "log2_scale_sum": w.log2_scale_sum}}
        if self.damping == "lm":
            state["damping_factor"] = self.damping_factor
            state["window"]["log2_damping_sum"] = w.log2_damping_sum
        if self.generator is not None:  # a list, so that state dicts compare with ==
            state["generator"] = self.generator.get_state().tolist()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.last_rho = state["last_rho"]
        self.window = RatioTestWindow(**state["window"])
        if self.damping == "lm":
            self.damping_factor = float(state["damping_factor"])
        if self.generator is not None:
            self.generator.set_state(torch.tensor(state["generator"], dtype=torch.uint8))
