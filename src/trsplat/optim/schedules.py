"""Learning-rate and trust-region schedules."""

from __future__ import annotations

import math


def exponential_decay(step: int, start: float, end: float, max_steps: int) -> float:
    """Log-linear interpolation from ``start`` (step 0) to ``end`` (step ``max_steps``), then held.

    This is 3DGS's ``get_expon_lr_func`` without the delay phase (3DGS passes no delay steps).
    """
    if start <= 0 or end <= 0:
        raise ValueError("exponential_decay needs positive start and end values")
    s = min(max(step / max(max_steps, 1), 0.0), 1.0)
    return math.exp((1.0 - s) * math.log(start) + s * math.log(end))
