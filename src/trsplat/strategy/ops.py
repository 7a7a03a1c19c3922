"""Change the set of Gaussians and keep every optimiser's state consistent with it.

The optimisers keep one param group per Gaussian attribute (``group["name"]``, one tensor) and,
in ``optimizer.state[p]``, per-Gaussian tensors shaped like ``p`` (Adam's moments, the gradient
and curvature EMAs of 3DGS²-TR) next to scalars (step counters). The helpers below replace each
parameter by a new leaf tensor and apply the same row operation to every per-Gaussian state
tensor, so shapes always match and entries stay attached to their Gaussian.

Rows that a strategy creates or moves get their state by a *policy* (:data:`STATE_POLICIES`,
measured in ``docs/densification.md``): ``zero`` (3DGS), ``inherit`` (a copy of the source
row's state) or ``inherit-curvature`` (the source's second-moment / curvature EMA, zero first
moments). Replacing a parameter drops its ``.grad``: like 3DGS, the optimiser step right after
a change of the set then has no gradient for that parameter.
"""

from __future__ import annotations

from typing import Callable

import torch

from trsplat.gaussians import Gaussians

ParamFn = Callable[[str, torch.Tensor], torch.Tensor]
StateFn = Callable[[str, str, torch.Tensor], torch.Tensor]

STATE_POLICIES = ("zero", "inherit", "inherit-curvature")
CURVATURE_KEYS = ("exp_avg_sq", "max_exp_avg_sq", "curv_ema")
"""Per-Gaussian state that estimates curvature (Adam's second moment, 3DGS²-TR's D̂), as opposed
to first moments (``exp_avg``, ``grad_ema``) that point along the last gradients."""


def inherits(policy: str, key: str) -> bool:
    """Whether state ``key`` of a new or moved row is copied from its source row under ``policy``."""
    if policy not in STATE_POLICIES:
        raise ValueError(f"unknown state policy {policy!r}; choose {', '.join(STATE_POLICIES)}")
    return policy == "inherit" or (policy == "inherit-curvature" and key in CURVATURE_KEYS)


def _group_of(optimizer: torch.optim.Optimizer, name: str) -> dict:
    for group in optimizer.param_groups:
        if group.get("name") == name:
            return group
    raise KeyError(f"optimizer has no param group named {name!r}")


@torch.no_grad()
def update_gaussians(gaussians: Gaussians, optimizer: torch.optim.Optimizer, param_fn: ParamFn,
                     state_fn: StateFn) -> None:
    """Replace every tensor ``p`` of ``gaussians`` by ``param_fn(name, p)`` (a new leaf that
    requires grad) and every per-Gaussian state tensor ``v`` of key ``key`` by
    ``state_fn(name, key, v)``; scalar state is kept."""
    for name, p in gaussians.params().items():
        new = param_fn(name, p.detach()).detach().requires_grad_(p.requires_grad)
        group = _group_of(optimizer, name)
        state = optimizer.state.pop(p, {})
        optimizer.state[new] = {key: state_fn(name, key, v) if _per_gaussian(v, p) else v
                                for key, v in state.items()}
        group["params"][0] = new
        setattr(gaussians, name, new)


def _per_gaussian(value: object, param: torch.Tensor) -> bool:
    return isinstance(value, torch.Tensor) and value.shape == param.shape and value.dim() > 0


def select(gaussians: Gaussians, optimizer: torch.optim.Optimizer, keep: torch.Tensor) -> None:
    """Keep the Gaussians where the (N,) bool mask ``keep`` is true (pruning)."""
    update_gaussians(gaussians, optimizer, lambda _, p: p[keep], lambda _, __, v: v[keep])


def append(gaussians: Gaussians, optimizer: torch.optim.Optimizer, new: dict[str, torch.Tensor], *,
           parents: torch.Tensor | None = None, policy: str = "zero") -> None:
    """Append Gaussians with raw values ``new`` (one tensor per attribute, M rows).

    Their optimiser state starts at zero, except the keys that ``policy`` inherits, copied from
    the rows ``parents`` ((M,) indices into the current Gaussians) when given.
    """
    def state(_, key: str, v: torch.Tensor) -> torch.Tensor:
        m = len(new["means"])
        rows = v[parents] if parents is not None and inherits(policy, key) else v.new_zeros((m, *v.shape[1:]))
        return torch.cat([v, rows])

    update_gaussians(gaussians, optimizer, lambda name, p: torch.cat([p, new[name].to(p)]), state)


def reset_state(gaussians: Gaussians, optimizer: torch.optim.Optimizer, rows: torch.Tensor,
                names: tuple[str, ...] | None = None) -> None:
    """Zero the per-Gaussian optimiser state of the Gaussians selected by ``rows`` (a bool mask
    or indices), for the attributes ``names`` (default: all), e.g. after relocating them."""
    def zero(name: str, __, v: torch.Tensor) -> torch.Tensor:
        v = v.clone()
        if names is None or name in names:
            v[rows] = 0
        return v

    update_gaussians(gaussians, optimizer, lambda _, p: p.clone(), zero)


def set_rows(gaussians: Gaussians, optimizer: torch.optim.Optimizer, rows: torch.Tensor,
             values: dict[str, torch.Tensor], *, sources: torch.Tensor | None = None,
             policy: str = "zero") -> None:
    """Overwrite the Gaussians ``rows`` ((M,) indices; repeated rows must get equal values).

    Attribute ``name`` of row ``rows[i]`` becomes ``values[name][i]`` when given, else the value
    of row ``sources[i]`` (a copy of another Gaussian) when ``sources`` is given, else stays.
    The state of every changed attribute at ``rows``: the keys that ``policy`` inherits are
    copied from ``sources`` (kept, without sources); the others become zero. Attributes that do
    not change keep their state.
    """
    def param(name: str, p: torch.Tensor) -> torch.Tensor:
        out = p.clone()
        if name in values:
            out[rows] = values[name].to(p)
        elif sources is not None:
            out[rows] = p[sources]
        return out

    def state(name: str, key: str, v: torch.Tensor) -> torch.Tensor:
        out = v.clone()
        if name not in values and sources is None:
            return out
        if not inherits(policy, key):
            out[rows] = 0
        elif sources is not None:
            out[rows] = v[sources]
        return out

    update_gaussians(gaussians, optimizer, param, state)


@torch.no_grad()
def perturb(gaussians: Gaussians, name: str, delta: torch.Tensor) -> None:
    """Add ``delta`` to attribute ``name`` in place: same tensor, same ``.grad`` and optimiser
    state (MCMC's position noise)."""
    getattr(gaussians, name).add_(delta.to(getattr(gaussians, name)))


@torch.no_grad()
def add_to_grad(gaussians: Gaussians, grads: dict[str, torch.Tensor]) -> None:
    """Add ``grads[name]`` to the ``.grad`` of each named attribute (created where missing): the
    gradient of a regulariser a strategy adds to the training loss."""
    for name, g in grads.items():
        p = getattr(gaussians, name)
        if p.grad is None:
            p.grad = g.to(p).clone()
        else:
            p.grad.add_(g.to(p))
