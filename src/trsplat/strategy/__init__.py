"""Densification strategies: objects the training loop calls around each backward pass.

A strategy may add, remove or move Gaussians; it must keep the optimiser's state consistent, which
:mod:`trsplat.strategy.ops` does for every optimiser. See ``docs/architecture.md``.
"""

from trsplat.strategy.base import NoDensification, Strategy, StepInfo, build_strategy

__all__ = ["NoDensification", "Strategy", "StepInfo", "build_strategy"]
