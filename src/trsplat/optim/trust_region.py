"""The Hellinger trust region as an object: clip proposed raw steps, apply them, count the clips.

Used by both trust-region optimisers (:mod:`trsplat.optim.tr`, :mod:`trsplat.optim.adam`); the
radii themselves are :func:`trsplat.optim.hellinger.clip_step`.  Memory care and the step
normalisation are explained in ``docs/trust_region.md`` ("The trust-region object").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Iterator, Mapping

import torch
from torch import Tensor

from trsplat.optim.hellinger import RADIUS_INPUTS, TrustRegionConfig, check_backend, clip_step

_FAR = 1e30  # a step this long is clipped to the radius in its direction for every parameter
_READ_BY_OTHERS = {k for name, inputs in RADIUS_INPUTS.items() for k in inputs if k != name}
"""Parameters some other parameter's radius reads: their clipped steps wait until all are clipped."""

StepObserver = Callable[[str, Tensor, Tensor, Tensor], None]
"""``observe(name, clipped step, on_bound mask, moving mask)``: sees each clipped step (read only)."""


@dataclass
class BoundStats:
    """Running count of coordinates whose step sat on the trust-region bound, per parameter name."""

    on_bound: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, on_bound: Tensor, moving: Tensor) -> None:
        """Count ``on_bound`` (mask) and the moving coordinates: the nonzero entries of ``moving``,
        the proposed step itself or its ``!= 0`` mask."""
        # count_nonzero: a bool tensor's sum() widens every element to int64 first (25x slower)
        self.on_bound[name] = self.on_bound.get(name, 0) + int(torch.count_nonzero(on_bound))
        self.total[name] = self.total.get(name, 0) + int(torch.count_nonzero(moving))

    def fractions(self) -> dict[str, float]:
        """Fraction of non-zero proposed steps that were clipped, per parameter name."""
        return {k: self.on_bound[k] / self.total[k] if self.total[k] else 0.0 for k in self.on_bound}

    def reset(self) -> None:
        self.on_bound.clear()
        self.total.clear()

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {"on_bound": dict(self.on_bound), "total": dict(self.total)}

    def load_state_dict(self, state: Mapping[str, Mapping[str, int]]) -> None:
        self.on_bound, self.total = dict(state["on_bound"]), dict(state["total"])


class HellingerTrustRegion:
    """Clips raw steps to the Hellinger radii of ``config`` with ``clip_backend`` (see
    :func:`~trsplat.optim.hellinger.clip_step`) and counts the clipped coordinates in ``stats``."""

    def __init__(self, config: TrustRegionConfig | None = None, clip_backend: str = "auto") -> None:
        check_backend(clip_backend)
        self.config = TrustRegionConfig() if config is None else config
        self.clip_backend = clip_backend
        self.stats = BoundStats()

    def clip(self, params: Mapping[str, Tensor], steps: Mapping[str, Tensor],
             eps: float) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        """``(clipped, on_bound)`` of :func:`~trsplat.optim.hellinger.clip_step`; counts nothing."""
        return clip_step(params, steps, eps, self.config, backend=self.clip_backend)

    @torch.no_grad()
    def clip_and_apply(self, params: Mapping[str, Tensor], steps: Iterable[tuple[str, Tensor]], eps: float,
                       observe: StepObserver | None = None, eps_of: Mapping[str, float] | None = None,
                       unclipped: Collection[str] = ()) -> None:
        """Clip each proposed ``(name, step)`` to the radii at the current ``params``, add it to
        ``params[name]`` in place and count it in :attr:`stats`. ``observe(name, clipped,
        on_bound, moving)``, when given, sees each clipped step before it is applied (the ratio
        test of :mod:`trsplat.optim.radius` sums its predicted decrease there). ``eps_of``, when
        given, replaces ``eps`` for the parameters it names (the adaptive radius's opacity cap).
        The steps of the parameters named in ``unclipped`` are applied as proposed (counted as
        moving, never on the bound): their own step rule bounds them.

        Every radius is computed from the parameters before any of them moves. The steps are
        consumed one at a time (NaN/inf → 0 in place, then released); a clipped step is applied
        at once unless another parameter's radius reads that parameter, and held until the end
        otherwise. With a lazy ``steps`` the peak memory is one parameter's step and temporaries
        plus the small held steps.
        """
        current = {k: v.detach() for k, v in params.items()}
        deferred = {}
        for name, st in steps:
            st = torch.nan_to_num_(st, nan=0.0, posinf=0.0, neginf=0.0)
            if name in unclipped:
                out, on_bound = {name: st}, {name: torch.zeros_like(st, dtype=torch.bool)}
            else:
                out, on_bound = self.clip(current, {name: st}, eps if eps_of is None else eps_of.get(name, eps))
            self.stats.add(name, on_bound[name], st)  # (st's nonzero entries are the moving ones)
            if observe is not None:
                observe(name, out[name], on_bound[name], st != 0)
            if name in _READ_BY_OTHERS:
                deferred[name] = out[name]
            else:
                params[name].add_(out[name])
            del st, out, on_bound
        for name, c in deferred.items():
            params[name].add_(c)

    @torch.no_grad()
    def bound_along(self, params: Mapping[str, Tensor], name: str, direction: Tensor, eps: float) -> Tensor:
        """The longest step within the bound at ``params`` along the sign of each coordinate of
        ``direction`` (0 where it is 0), shaped like it: the radius in that direction, or less
        where a box is nearer."""
        return self.clip(params, {name: torch.sign(direction).mul_(_FAR)}, eps)[0][name]

    @torch.no_grad()
    def scale_to_radius(self, params: Mapping[str, Tensor], name: str, step: Tensor, eps: float,
                        quantile: float = 0.5) -> Tensor:
        """``step`` (NaN/inf → 0, in place) divided by the ``quantile`` over its moving coordinates
        of |step| / radius (the lower median for 0.5, as ``Tensor.median``), the radius being the
        bound in the step's direction at ``params`` (zero radii, e.g. a box, are left out).
        Afterwards a fraction ``quantile`` of the moving coordinates lies inside its radius."""
        st = torch.nan_to_num_(step, nan=0.0, posinf=0.0, neginf=0.0)
        radius = self.bound_along(params, name, st, eps).abs_()
        usable = (st != 0) & (radius > 0)
        if usable.any():
            ratios = st[usable].abs() / radius[usable]
            k = max(1, math.ceil(quantile * ratios.numel()))
            ratio = ratios.kthvalue(k).values
            if ratio > 0:
                st.div_(ratio)
        return st


def drain(steps: dict[str, Tensor]) -> Iterator[tuple[str, Tensor]]:
    """Yield and remove the entries of ``steps``, so each is released once it is clipped."""
    while steps:
        name = next(iter(steps))
        yield name, steps.pop(name)


def named_params(param_groups: list[dict]) -> dict[str, Tensor]:
    """``{name: tensor}`` of one-tensor param groups with a ``"name"`` key, in group order."""
    return {g["name"]: g["params"][0] for g in param_groups}


def group_eps(param_groups: list[dict]) -> float:
    """The trust-region ε of the param groups (key ``"tr_eps"``), which must be the same for all."""
    eps = param_groups[0]["tr_eps"]
    if any(g["tr_eps"] != eps for g in param_groups):
        raise ValueError("every param group must have the same 'tr_eps' (the clip reads one ε)")
    return eps


class WithTrustRegion:
    """Mixin for a torch optimizer with a :class:`HellingerTrustRegion` ``trust_region``: its bound
    statistics travel in the optimizer's ``state_dict`` (key ``"trust_region_stats"``)."""

    trust_region: HellingerTrustRegion

    def state_dict(self) -> dict:
        state = super().state_dict()  # type: ignore[misc]
        state["trust_region_stats"] = self.trust_region.stats.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)  # type: ignore[misc]
        self.trust_region.stats.load_state_dict(state_dict["trust_region_stats"])
