"""Change the set of Gaussians and keep every optimiser's state consistent with it.

The optimisers keep one param group per Gaussian attribute (``group["name"]``, one tensor) and,
in ``optimizer.state[p]``, per-Gaussian tensors shaped like ``p`` (Adam's moments, the gradient
and curvature EMAs of 3DGS²-TR) next to scalars (step counters). The helpers below replace each
parameter by a new leaf tensor and apply the same row operation to every per-Gaussian state
tensor, so shapes always match and entries stay attached to their Gaussian.
"""

from __future__ import annotations

from typing import Callable

import torch

from trsplat.gaussians import Gaussians

ParamFn = Callable[[str, torch.Tensor], torch.Tensor]
StateFn = Callable[[str, str, torch.Tensor], torch.Tensor]


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


def append(gaussians: Gaussians, optimizer: torch.optim.Optimizer, new: dict[str, torch.Tensor]) -> None:
    """Append Gaussians with raw values ``new`` (one tensor per attribute, M rows); their
    optimiser state starts at zero."""
    update_gaussians(gaussians, optimizer, lambda name, p: torch.cat([p, new[name].to(p)]),
                     lambda name, _, v: torch.cat([v, v.new_zeros((len(new[name]), *v.shape[1:]))]))


def reset_state(gaussians: Gaussians, optimizer: torch.optim.Optimizer, rows: torch.Tensor) -> None:
    """Zero the per-Gaussian optimiser state of the Gaussians selected by ``rows`` (a bool mask
    or indices), e.g. after relocating them."""
    def zero(_, __, v: torch.Tensor) -> torch.Tensor:
        v = v.clone()
        v[rows] = 0
        return v

    update_gaussians(gaussians, optimizer, lambda _, p: p.clone(), zero)
