"""Schedules of optimizer hyperparameters: the 3DGS position-lr decay and the trust-region ε(t)."""

from __future__ import annotations

import math

import torch


def exponential_decay(step: int, start: float, end: float, max_steps: int) -> float:
    """Log-linear interpolation from ``start`` (step 0) to ``end`` (step ``max_steps``), then held.

    This is 3DGS's ``get_expon_lr_func`` without the delay phase (3DGS passes no delay steps).
    """
    if start <= 0 or end <= 0:
        raise ValueError("exponential_decay needs positive start and end values")
    s = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp((1.0 - s) * math.log(start) + s * math.log(end))


class ExponentialDecay:
    """Sets ``key`` of the param group named ``group`` (None: of every group) to
    :func:`exponential_decay` of the iteration.

    ``step(iteration)`` takes the 1-based training iteration (call it right before the
    optimizer's step); the schedule holds no state of its own, and reads the optimizer's current
    param groups (``load_state_dict`` replaces them).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, key: str, start: float, end: float, max_steps: int,
                 group: str | None = None) -> None:
        if start <= 0 or end <= 0:
            raise ValueError(f"ExponentialDecay of {key!r} needs positive start and end, got {start}, {end}")
        if not any(group is None or g.get("name") == group for g in optimizer.param_groups):
            raise ValueError(f"the optimizer has no param group named {group!r}")
        self.optimizer, self.key, self.group = optimizer, key, group
        self.start, self.end, self.max_steps = start, end, max_steps

    def value(self, iteration: int) -> float:
        return exponential_decay(iteration, self.start, self.end, self.max_steps)

    def step(self, iteration: int) -> None:
        value = self.value(iteration)
        for g in self.optimizer.param_groups:
            if self.group is None or g.get("name") == self.group:
                g[self.key] = value
