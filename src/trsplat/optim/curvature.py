"""Estimators of diag(JᵀJ), the Gauss–Newton diagonal of the per-image training loss.

The loss of one image is written as ``½‖r‖²`` with residuals r, so that ``∇L = Jᵀr`` and the
Gauss–Newton matrix is ``JᵀJ`` (J: Jacobian of r w.r.t. all raw parameters). The caller supplies
``residual_fn(params, frame) -> r`` (flat, differentiable in both AD modes; for trsplat: render
the Gaussians of ``params``, then :func:`trsplat.loss.residuals`). Three estimators, one interface
(``estimate(...) -> {name: tensor}``, each tensor shaped like the raw parameter):

- ``hutchinson`` (the paper): ``D = z ⊙ JᵀJz`` with Rademacher z over all raw parameters. One
  forward-mode render with tangent z gives ``ṙ = Jz``; one backward of r with cotangent ``ṙ``
  gives ``JᵀJz``. Unbiased, but single samples are often negative (off-diagonal terms).
- ``gnb`` (Gauss–Newton–Bartlett): ``D = (Jᵀu)²`` with Rademacher u over the residuals. One
  backward, no JVP; unbiased for the same diagonal and never negative.
- ``none``: ``D = 0``; with the optimiser's guard every step becomes sign(−ĝ) × its radius.

``n_probes`` (ν) probes per view and several views (|S₂|) are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch.autograd import forward_ad

CURVATURES = ("hutchinson", "gnb", "none")

# (raw params by name, frame) -> residual vector r (flat), differentiable in both AD modes.
ResidualFn = Callable[[dict[str, torch.Tensor], object], torch.Tensor]


def rademacher_like(t: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A ±1 tensor shaped like ``t`` (drawn on the CPU generator, moved to ``t``'s device)."""
    bits = torch.randint(0, 2, t.shape, generator=generator, dtype=torch.int8)
    return bits.to(t.dtype).mul_(2).sub_(1).to(t.device)  # in place: one float buffer (peak memory)


Share = tuple[int, int]
"""``(rank, size)``: the views ``j`` with ``j % size == rank`` are this process's (data-parallel
training, docs/distributed.md). Every rank draws the probes of every view, so the random numbers
and the sum over the ranks equal those of one process; each rank returns its views' part of the
mean (the sum over ranks is the estimate)."""


def _owned(j: int, share: Share) -> bool:
    return j % share[1] == share[0]


def _leaves(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().requires_grad_(True) for k, v in params.items()}


def _grads(out: torch.Tensor, leaves: dict[str, torch.Tensor], cotangent: torch.Tensor) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(out, list(leaves.values()), grad_outputs=cotangent, allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}


def gauss_newton_product(params: dict[str, torch.Tensor], frame, residual_fn: ResidualFn,
                         z: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """JᵀJz for one view: one forward-mode render with tangent z, one backward with cotangent Jz."""
    leaves = _leaves(params)
    with forward_ad.dual_level():
        duals = {k: forward_ad.make_dual(v, z[k]) for k, v in leaves.items()}
        primal, tangent = forward_ad.unpack_dual(residual_fn(duals, frame))
        jz = None if tangent is None else tangent.detach()
        del duals, tangent
    # Peak memory: Jz is kept without the graph autograd records for it (which holds the
    # intermediates it was computed from), and the backward runs after the dual level is left,
    # which frees the tangents the graph's saved tensors still hold (it reads only primals).
    if jz is None:  # nothing in view depends on the parameters
        return {k: torch.zeros_like(v) for k, v in leaves.items()}
    return _grads(primal, leaves, jz)


def hutchinson(params: dict[str, torch.Tensor], frames: Sequence, residual_fn: ResidualFn,
               generator: torch.Generator, n_probes: int = 1, share: Share = (0, 1)) -> dict[str, torch.Tensor]:
    """Mean over views and ν probes of z ⊙ JᵀJz (Rademacher z over every raw parameter)."""
    total: dict[str, torch.Tensor] = {}
    for j, frame in enumerate(frames):
        for _ in range(n_probes):
            z = {k: rademacher_like(v, generator) for k, v in params.items()}
            if not _owned(j, share):
                continue
            jtjz = gauss_newton_product(params, frame, residual_fn, z)
            for k in params:  # in place: the peak memory is z, JᵀJz and the sum so far
                sample = jtjz.pop(k).mul_(z.pop(k))
                total[k] = total[k].add_(sample) if k in total else sample
    count = len(frames) * n_probes
    return {k: total[k].div_(count) if k in total else torch.zeros_like(v) for k, v in params.items()}


def gauss_newton_bartlett(params: dict[str, torch.Tensor], frames: Sequence, residual_fn: ResidualFn,
                          generator: torch.Generator, n_probes: int = 1,
                          share: Share = (0, 1)) -> dict[str, torch.Tensor]:
    """Mean over views and ν probes of (Jᵀu)² (Rademacher u over the residuals): never negative.
    With a ``share``, the u of other ranks' views are drawn (``residual_fn.numel(frame)`` long)
    and dropped."""
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for j, frame in enumerate(frames):
        for _ in range(n_probes):
            if not _owned(j, share):
                rademacher_like(torch.empty(residual_fn.numel(frame)), generator)
                continue
            leaves = _leaves(params)
            r = residual_fn(leaves, frame)
            u = rademacher_like(r, generator)
            for k, g in _grads(r, leaves, u).items():
                total[k] += g.mul_(g)
    count = len(frames) * n_probes
    return {k: v.div_(count) for k, v in total.items()}


@dataclass
class CurvatureEstimator:
    """Chooses the estimator by name; ``estimate`` returns D with the shapes of ``params``."""

    kind: str = "hutchinson"
    n_probes: int = 1

    def __post_init__(self) -> None:
        if self.kind not in CURVATURES:
            raise ValueError(f"unknown curvature estimator {self.kind!r}; choose {', '.join(CURVATURES)}")

    def estimate(self, params: dict[str, torch.Tensor], frames: Sequence, residual_fn: ResidualFn,
                 generator: torch.Generator, share: Share = (0, 1)) -> dict[str, torch.Tensor]:
        if self.kind == "none":
            return {k: torch.zeros_like(v) for k, v in params.items()}
        fn = hutchinson if self.kind == "hutchinson" else gauss_newton_bartlett
        return fn(params, frames, residual_fn, generator, self.n_probes, share)
