"""strategy.ops keeps every optimiser's state attached to its Gaussian when the set changes."""

from __future__ import annotations

import pytest
import torch

from trsplat.config import OptimizerConfig
from trsplat.gaussians import Gaussians
from trsplat.optim.build import build_optimizer
from trsplat.optim.tr import TrustRegionNewton
from trsplat.strategy import ops


def _gaussians(n: int, seed: int = 0) -> Gaussians:
    g = torch.Generator().manual_seed(seed)
    return Gaussians(means=torch.randn(n, 3, generator=g), log_scales=torch.randn(n, 3, generator=g) - 3,
                     quats=torch.randn(n, 4, generator=g), opacity_logits=torch.randn(n, generator=g),
                     sh_dc=torch.randn(n, 1, 3, generator=g) * 0.3, sh_rest=torch.randn(n, 15, 3, generator=g) * 0.01
                     ).requires_grad_(True)


def _step(gaussians: Gaussians, optimizer, schedulers, iteration: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for p in gaussians.params().values():
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    for s in schedulers:
        s.step(iteration)

    def curvature(generator):
        return {k: torch.rand(v.shape, generator=g) for k, v in gaussians.params().items()}

    optimizer.step(curvature) if isinstance(optimizer, TrustRegionNewton) else optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _per_gaussian_state(optimizer) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for group in optimizer.param_groups:
        p = group["params"][0]
        out[group["name"]] = {k: v for k, v in optimizer.state[p].items()
                              if isinstance(v, torch.Tensor) and v.shape == p.shape and v.dim() > 0}
    return out


@pytest.mark.parametrize("name", ["adam", "adam-tr", "tr"])
def test_select_append_reset_keep_state_aligned(name) -> None:
    gaussians = _gaussians(12)
    optimizer, schedulers = build_optimizer(OptimizerConfig(optimizer=name, curvature_interval=2),
                                            gaussians.params(), extent=1.0, iters=20, seed=0)
    for it in (1, 2, 3):
        _step(gaussians, optimizer, schedulers, it, it)
    before = {k: {s: v.clone() for s, v in st.items()} for k, st in _per_gaussian_state(optimizer).items()}
    assert before and all(before.values())  # every optimiser keeps per-Gaussian state
    keep = torch.arange(12) % 3 != 0
    ops.select(gaussians, optimizer, keep)
    assert len(gaussians) == 8
    for k, st in _per_gaussian_state(optimizer).items():
        for s, v in st.items():
            assert torch.equal(v, before[k][s][keep]), (k, s)
    new = {k: v.detach()[:2].clone() for k, v in _gaussians(2, seed=1).params().items()}
    ops.append(gaussians, optimizer, new)
    assert len(gaussians) == 10 and torch.equal(gaussians.means[8:], new["means"])
    for k, st in _per_gaussian_state(optimizer).items():
        for s, v in st.items():
            assert v.shape[0] == 10 and not v[8:].any() and torch.equal(v[:8], before[k][s][keep]), (k, s)
    ops.reset_state(gaussians, optimizer, torch.tensor([0, 1]))
    for st in _per_gaussian_state(optimizer).values():
        for v in st.values():
            assert not v[:2].any()
    # the optimiser steps the new tensors, and every parameter is a leaf it owns
    params = gaussians.params()
    assert all(group["params"][0] is params[group["name"]] for group in optimizer.param_groups)
    before_means = gaussians.means.detach().clone()
    _step(gaussians, optimizer, schedulers, 4, 4)
    assert not torch.equal(before_means, gaussians.means.detach())
