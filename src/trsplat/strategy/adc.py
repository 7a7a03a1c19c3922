"""3DGS's adaptive density control (ADC): clone, split, prune and reset opacities.

Every ``every`` iterations in (``start``, ``stop``): Gaussians whose mean view-space positional
gradient (NDC units, :func:`ndc_grad_norm`) reached ``grad_threshold`` are cloned when small
(largest scale ≤ ``percent_dense`` × extent) and split in two when large; then Gaussians with
opacity < ``prune_opacity`` (and, after the first opacity reset, those larger than
``prune_scale`` × extent) are removed. Every ``reset_every`` iterations before ``stop`` the
opacities are clamped to ≤ 0.01. Conventions and departures from 3DGS: ``docs/densification.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from trsplat.gaussians import Gaussians
from trsplat.strategy import ops
from trsplat.render.project import quat_to_rotmat
from trsplat.strategy.base import Strategy, StepInfo, StrategyGenerator

RESET_OPACITY = 0.01
SPLIT_CHILDREN = 2
SPLIT_SCALE_DIVISOR = 0.8 * SPLIT_CHILDREN  # 3DGS: children's scales are the parent's / 1.6


@dataclass
class ADCParams:
    """3DGS's defaults for a 30k-iteration run (the iteration fields are already scaled to the
    run by :func:`trsplat.strategy.build.build_strategy`)."""

    start: int = 500
    stop: int = 15_000
    every: int = 100
    reset_every: int = 3000
    grad_threshold: float = 2e-4
    percent_dense: float = 0.01
    prune_opacity: float = 0.005
    prune_scale: float = 0.1
    state_policy: str = "zero"


def ndc_grad_norm(grad_px: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(N,) norm of a (N, 2) gradient w.r.t. screen positions in pixels, expressed per NDC unit.

    NDC spans [-1, 1] over ``width`` (``height``) pixels, so d/d(ndc) = d/d(px) · W/2 (H/2): the
    statistic INRIA's rasterizer accumulates, on which the 0.0002 threshold is set.
    """
    scale = grad_px.new_tensor([width / 2.0, height / 2.0])
    return (grad_px * scale).norm(dim=-1)


def rotation_matrices(quats: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations of (N, 4) unnormalised quaternions (w, x, y, z), normalised as 3DGS."""
    return quat_to_rotmat(torch.nn.functional.normalize(quats, dim=-1))


class AdaptiveDensityControl(Strategy):
    """ADC with ``params`` for a scene of radius ``extent`` (world units).

    ``white_background``: also reset the opacities at ``start``, as 3DGS does for white
    backgrounds. ``seed`` seeds the generator of the split positions (saved for ``--resume``).
    """

    def __init__(self, params: ADCParams, *, extent: float, white_background: bool = False, seed: int = 0) -> None:
        ops.inherits(params.state_policy, "")  # fails early on an unknown policy
        self.params = params
        self.extent = float(extent)
        self.white_background = white_background
        self.generator = StrategyGenerator(seed + 4241)
        self.grad_accum: torch.Tensor | None = None   # (N,) sum of NDC gradient norms over visible views
        self.count: torch.Tensor | None = None        # (N,) number of those views
        self.history: list[dict[str, int]] = []       # one record per refinement (counts)

    # -- statistics ---------------------------------------------------------------------------
    def step_pre_backward(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, info: StepInfo) -> None:
        if info.iteration < self.params.stop:
            means2d = info.renders[-1].means2d
            if means2d.requires_grad:
                means2d.retain_grad()

    @torch.no_grad()
    def accumulate(self, gaussians: Gaussians, info: StepInfo) -> None:
        """Add this step's per-view NDC gradient norms of the visible Gaussians (3DGS: radii > 0).
        The loss of a step is averaged over its views; the gradients are scaled back by their
        number, as one view per step."""
        device = gaussians.means.device
        if self.grad_accum is None or len(self.grad_accum) != len(gaussians):
            self.grad_accum = torch.zeros(len(gaussians), device=device)
            self.count = torch.zeros_like(self.grad_accum)
        self.grad_accum, self.count = self.grad_accum.to(device), self.count.to(device)
        # data-parallel: this process's renders into zeros, summed over the processes, then added
        grad_accum, count = ((self.grad_accum, self.count) if info.reduce is None
                             else (torch.zeros_like(self.grad_accum), torch.zeros_like(self.count)))
        for out in info.renders:
            grad = out.means2d.grad
            if grad is None:
                continue
            height, width = out.image.shape[:2]
            visible = out.radii > 0
            norms = ndc_grad_norm(grad * len(info.view_ids), int(width), int(height))
            grad_accum[visible] += norms[visible]
            count[visible] += 1
        if info.reduce is not None:
            info.reduce({"grad_accum": grad_accum, "count": count})
            self.grad_accum += grad_accum
            self.count += count

    # -- the step -----------------------------------------------------------------------------
    def step_post_backward(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, info: StepInfo) -> None:
        p = self.params
        it = info.iteration
        if it >= p.stop:
            return
        self.accumulate(gaussians, info)
        if it > p.start and it % p.every == 0:
            info.extras["densify"] = self.refine(gaussians, optimizer, it)
        if it % p.reset_every == 0 or (self.white_background and it == p.start):
            self.reset_opacity(gaussians, optimizer)

    @torch.no_grad()
    def refine(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, iteration: int) -> dict[str, int]:
        """Clone, split and prune once from the accumulated statistics; reset them."""
        p = self.params
        n0 = len(gaussians)
        mean_grad = torch.nan_to_num(self.grad_accum / self.count, nan=0.0)
        high = mean_grad >= p.grad_threshold
        small = gaussians.scales.detach().max(dim=-1).values <= p.percent_dense * self.extent
        clone = torch.nonzero(high & small).squeeze(1)
        split = torch.nonzero(high & ~small).squeeze(1)
        self.clone(gaussians, optimizer, clone)
        self.split(gaussians, optimizer, split)  # indices below n0: clones (appended) are not split
        opacities = gaussians.opacities.detach()
        prune = opacities < p.prune_opacity
        if iteration > p.reset_every:
            prune |= gaussians.scales.detach().max(dim=-1).values > p.prune_scale * self.extent
        ops.select(gaussians, optimizer, ~prune)
        self.grad_accum = torch.zeros(len(gaussians), device=gaussians.means.device)
        self.count = torch.zeros_like(self.grad_accum)
        record = {"iteration": iteration, "before": n0, "cloned": len(clone), "split": len(split),
                  "pruned": int(prune.sum()), "after": len(gaussians)}
        self.history.append(record)
        return record

    def clone(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, rows: torch.Tensor) -> None:
        """Append exact copies of the Gaussians ``rows``."""
        if len(rows):
            new = {k: v.detach()[rows] for k, v in gaussians.params().items()}
            ops.append(gaussians, optimizer, new, parents=rows, policy=self.params.state_policy)

    def split(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, rows: torch.Tensor) -> None:
        """Replace each Gaussian of ``rows`` by two children drawn from it: positions sampled from
        the parent's Gaussian N(μ, R S² Rᵀ), scales / 1.6, everything else copied."""
        if not len(rows):
            return
        params = {k: v.detach() for k, v in gaussians.params().items()}
        parents = rows.repeat(SPLIT_CHILDREN)
        scales = torch.exp(params["log_scales"][parents])
        z = torch.randn(scales.shape, generator=self.generator.on(scales.device), device=scales.device)
        offsets = (rotation_matrices(params["quats"][parents]) @ (scales * z)[:, :, None]).squeeze(-1)
        new = {k: v[parents] for k, v in params.items()}
        new["means"] = params["means"][parents] + offsets
        new["log_scales"] = torch.log(scales / SPLIT_SCALE_DIVISOR)
        ops.append(gaussians, optimizer, new, parents=parents, policy=self.params.state_policy)
        keep = torch.ones(len(gaussians), dtype=torch.bool, device=rows.device)
        keep[rows] = False
        ops.select(gaussians, optimizer, keep)

    def reset_opacity(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer) -> None:
        """Opacities ← min(opacity, 0.01); their optimiser state is zeroed as 3DGS does (kept
        under the ``inherit`` policy)."""
        logits = gaussians.opacity_logits.detach()
        clamped = torch.minimum(logits, torch.full_like(logits, math.log(RESET_OPACITY / (1 - RESET_OPACITY))))
        rows = torch.arange(len(logits), device=logits.device)
        policy = "inherit" if self.params.state_policy == "inherit" else "zero"
        ops.set_rows(gaussians, optimizer, rows, {"opacity_logits": clamped}, policy=policy)

    # -- records and resume ---------------------------------------------------------------------
    def records(self) -> list[dict[str, int]]:
        return list(self.history)

    def state_dict(self) -> dict[str, Any]:
        return {"params": asdict(self.params), "grad_accum": _cpu(self.grad_accum), "count": _cpu(self.count),
                "generator": self.generator.state_dict(), "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the statistics and the generator; the schedule comes from the config (a
        resume that extends ``--iters`` re-spans it, as the optimiser's schedules)."""
        if not state:
            return
        self.grad_accum, self.count = state["grad_accum"], state["count"]
        self.generator.load_state_dict(state["generator"])
        self.history = list(state["history"])



def _cpu(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().cpu()
