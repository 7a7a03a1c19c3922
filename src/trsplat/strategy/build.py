"""The strategy of a training configuration (``--densify`` and its options)."""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Sequence

from trsplat.errors import TrsplatError
from trsplat.optim.schedules import exponential_decay
from trsplat.strategy.adc import ADCParams, AdaptiveDensityControl
from trsplat.strategy.base import NoDensification, Strategy
from trsplat.strategy.mcmc import MCMC, MCMCParams

STRATEGIES = ("none", "adc", "mcmc")
REFERENCE_ITERS = 30_000
"""The run length the strategies' iteration defaults are written for (3DGS, 3DGS-MCMC)."""
MIN_EVERY = 20
"""Scaling never brings the refinement interval below this (or below ``densify_every`` when that
is smaller): fewer views make the gradient statistic noisy and copies need steps to separate
(measured in ``docs/densification.md``)."""


def steps_scale(iters: int, scale: float | None) -> float:
    """The factor applied to every iteration option of a strategy: ``scale``, or by default
    min(1, iters / 30 000), so a shorter run goes through the same phases and the same number of
    refinements as a 30k run (``docs/densification.md``)."""
    return float(scale) if scale is not None else min(1.0, iters / REFERENCE_ITERS)


def _scaled(value: int, scale: float, minimum: int = 0) -> int:
    return max(minimum, int(round(value * scale)))


def scaled_every(every: int, scale: float) -> int:
    """The refinement interval of a run: ``every`` × ``scale``, not below min(every, MIN_EVERY)."""
    return _scaled(every, scale, min(every, MIN_EVERY))


def build_strategy(scfg: Any = "none", ocfg: Any = None, *, iters: int = REFERENCE_ITERS,
                   extent: float | None = None, background: Sequence[float] | None = None,
                   seed: int = 0) -> Strategy:
    """The strategy named by ``scfg.densify`` (or the name ``scfg``).

    ``scfg`` has the fields of :class:`trsplat.config.StrategyConfig`, ``ocfg`` those of the
    optimizer config (the position-lr schedule that scales MCMC's noise); ``extent`` is the scene
    radius (ADC's size thresholds), ``background`` its RGB (white: ADC's extra opacity reset at
    its start, as 3DGS); ``seed`` seeds the strategy's own generator.
    """
    name = scfg if isinstance(scfg, str) else scfg.densify
    if name == "none":
        return NoDensification()
    if name not in STRATEGIES:
        raise TrsplatError(f"--densify {name!r}: unknown strategy; choose {', '.join(STRATEGIES)}")
    if isinstance(scfg, str):
        raise TrsplatError(f"--densify {name}: build_strategy needs the strategy options, not only the name")
    s = steps_scale(iters, scfg.densify_steps_scale)
    if name == "adc":
        if extent is None:
            raise TrsplatError("--densify adc needs the scene extent (build_strategy(..., extent=scene.extent))")
        d = ADCParams()
        params = replace(
            d, start=_scaled(_or(scfg.densify_start, d.start), s), stop=_scaled(_or(scfg.densify_stop, d.stop), s),
            every=scaled_every(scfg.densify_every, s), reset_every=_scaled(scfg.opacity_reset_every, s, 1),
            grad_threshold=scfg.densify_grad_threshold, percent_dense=scfg.percent_dense,
            prune_opacity=scfg.prune_opacity, prune_scale=scfg.prune_scale, state_policy=scfg.densify_state)
        white = background is not None and all(float(c) == 1.0 for c in background)
        return AdaptiveDensityControl(params, extent=extent, white_background=white, seed=seed)
    if ocfg is None or extent is None:
        raise TrsplatError("--densify mcmc needs the optimizer options and the scene extent "
                           "(its noise follows the position learning rate)")
    d = MCMCParams()
    params = replace(
        d, cap_max=scfg.cap_max, start=_scaled(_or(scfg.densify_start, d.start), s),
        stop=_scaled(_or(scfg.densify_stop, d.stop), s), every=scaled_every(scfg.densify_every, s),
        grow_rate=scfg.mcmc_grow_rate, min_opacity=scfg.prune_opacity, noise_lr=scfg.mcmc_noise_lr,
        opacity_reg=scfg.opacity_reg, scale_reg=scfg.scale_reg, state_policy=scfg.densify_state,
        noise_in_radius=scfg.mcmc_noise_in_radius, opacity_reg_until_stop=scfg.opacity_reg_until_stop)
    lr = functools.partial(exponential_decay, start=ocfg.lr_means * extent, end=ocfg.lr_means_final * extent,
                           max_steps=ocfg.lr_means_max_steps or iters)
    return MCMC(params, position_lr=lr, seed=seed)


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
