"""Densification strategies: objects the training loop calls around each backward pass.

A strategy may add, remove or move Gaussians; it must keep the optimiser's state consistent, which
:mod:`trsplat.strategy.ops` does for every optimiser. ``none`` (the paper's protocol), ``adc``
(3DGS's adaptive density control) and ``mcmc`` (3DGS-MCMC): ``docs/architecture.md``,
``docs/densification.md``.
"""

from trsplat.strategy.base import NoDensification, Strategy, StepInfo, StrategyGenerator
from trsplat.strategy.build import STRATEGIES, build_strategy, steps_scale

__all__ = ["NoDensification", "STRATEGIES", "Strategy", "StepInfo", "StrategyGenerator", "build_strategy", "steps_scale"]
