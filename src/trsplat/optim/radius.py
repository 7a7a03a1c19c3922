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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

RADIUS_MODES = ("fixed", "adaptive")

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
"""κ stays in [2⁻¹⁰, 2¹⁰] (radii about 1/32 to 32 times the scheduled ones)."""


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


@dataclass
class AdaptiveRadius:
    """The factor κ on ε and its ratio-test rule (module docstring); state in ``state_dict``."""

    test_every: int = 10
    scale: float = 1.0
    window: RatioTestWindow = field(default_factory=RatioTestWindow)
    last_rho: float | None = None

    def __post_init__(self) -> None:
        if self.test_every < 1:
            raise ValueError(f"test_every must be >= 1, got {self.test_every}")

    def due(self, step: int) -> bool:
        """A test at steps t ≡ 0 (mod ``test_every``) (never with a curvature refresh at
        t ≡ 1 (mod l) when l = ``test_every`` > 1)."""
        return step % self.test_every == 0

    def update(self, predicted: float, actual: float, bound_share: float) -> float | None:
        """Apply the rule for one test; returns ρ (None when the test was skipped)."""
        w = self.window
        w.tests += 1
        rho: float | None = None
        if predicted > 0 and math.isfinite(predicted) and math.isfinite(actual):
            rho = actual / predicted
            w.rho_sum += rho
            w.accepted += rho > 0
            if rho < SHRINK_BELOW:
                self.scale = max(self.scale * SHRINK, SCALE_MIN)
                w.shrinks += 1
            elif rho > GROW_ABOVE and bound_share >= BOUND_SHARE:
                self.scale = min(self.scale * GROW, SCALE_MAX)
                w.grows += 1
        else:
            w.skipped += 1
        w.log2_scale_sum += math.log2(self.scale)
        self.last_rho = rho
        return rho

    def window_statistics(self) -> dict[str, Any]:
        """The ratio-test record of ``metrics.json`` for the tests since the last reset: ``scale``
        (κ now), ``scale_mean`` (geometric mean of κ after each test), ``tests``, ``skipped``,
        ``rho_mean`` (over the tests not skipped), ``accept_fraction`` (ρ > 0), ``shrink_fraction``
        and ``grow_fraction`` (of the tests not skipped); None where there was no test."""
        w = self.window
        used = w.tests - w.skipped
        return {
            "scale": self.scale,
            "scale_mean": 2.0 ** (w.log2_scale_sum / w.tests) if w.tests else None,
            "tests": w.tests, "skipped": w.skipped,
            "rho_mean": w.rho_sum / used if used else None,
            "accept_fraction": w.accepted / used if used else None,
            "shrink_fraction": w.shrinks / used if used else None,
            "grow_fraction": w.grows / used if used else None,
        }

    def reset_window(self) -> None:
        self.window = RatioTestWindow()

    def state_dict(self) -> dict[str, Any]:
        w = self.window
        return {"scale": self.scale, "last_rho": self.last_rho,
                "window": {"tests": w.tests, "skipped": w.skipped, "accepted": w.accepted, "shrinks": w.shrinks,
                           "grows": w.grows, "rho_sum": w.rho_sum, "log2_scale_sum": w.log2_scale_sum}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.scale = float(state["scale"])
        self.last_rho = state["last_rho"]
        self.window = RatioTestWindow(**state["window"])
