"""3DGS-MCMC (Kheradmand et al. 2024): relocate dead Gaussians, grow to a cap, perturb positions.

Every ``every`` iterations in (``start``, ``stop``): the dead Gaussians (opacity ≤
``min_opacity``) move onto live ones drawn with probability ∝ opacity, and ``grow_rate`` × N new
Gaussians (up to ``cap_max``) are drawn the same way; a source drawn n − 1 times and its n − 1
copies share its contribution (:func:`relocation`). Every iteration: the L1 regularisers
``opacity_reg`` · mean(opacity) + ``scale_reg`` · mean(scale) join the gradient (with
``opacity_reg_until_stop`` the opacity term only before ``stop``), and the
positions get the noise lr · ``noise_lr`` · σ(−k(o − t)) · Σ ε, ε ~ N(0, I), Σ the Gaussian's
covariance and lr the position learning rate of the iteration. Conventions and departures:
``docs/densification.md``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch

from trsplat.gaussians import Gaussians
from trsplat.optim.trust_region import WithTrustRegion, group_eps, named_params
from trsplat.strategy import ops
from trsplat.strategy.adc import rotation_matrices
from trsplat.strategy.base import Strategy, StepInfo, StrategyGenerator

MAX_RATIO = 51
"""Copies sharing one source are capped at this many (the binomial sums stay exact in float64)."""


@dataclass
class MCMCParams:
    """3DGS-MCMC's defaults for a 30k-iteration run (iteration fields already scaled to the run)."""

    cap_max: int = 1_000_000
    start: int = 500
    stop: int = 25_000
    every: int = 100
    grow_rate: float = 0.05
    min_opacity: float = 0.005
    noise_lr: float = 5e5
    noise_k: float = 100.0
    noise_t: float = 0.005
    opacity_reg: float = 0.01
    scale_reg: float = 0.01
    state_policy: str = "zero"
    noise_in_radius: bool = False
    opacity_reg_until_stop: bool = False


def relocation(opacities: torch.Tensor, scales: torch.Tensor, ratios: torch.Tensor,
               min_opacity: float = 0.005) -> tuple[torch.Tensor, torch.Tensor]:
    """The opacity and scales of each of n = ``ratios`` Gaussians that replace one (Eq. 9 of
    the paper): o' = 1 − (1 − o)^(1/n), clamped to [min_opacity, 1 − 2⁻²³], and
    s' = s · o / Σ_{k=1..n} C(n, k) (−1)^(k−1) o'^k / √k.

    n stacked copies composite to 1 − (1 − o'g)^n; with o' as above their peak opacity is o,
    and with s' their 1D integral equals that of the original (o s √(2π)). Shapes: (M,),
    (M, 3), (M,) ints ≥ 1 (capped at :data:`MAX_RATIO`); computed in float64.
    """
    o = opacities.double()
    n = ratios.clamp(1, MAX_RATIO).to(torch.float64)
    o_new = (1.0 - torch.pow(1.0 - o, 1.0 / n)).clamp(min_opacity, 1.0 - torch.finfo(torch.float32).eps)
    k = torch.arange(1, MAX_RATIO + 1, dtype=torch.float64, device=o.device)       # (K,)
    log_binom = (torch.lgamma(n[:, None] + 1) - torch.lgamma(k + 1) - torch.lgamma(n[:, None] - k + 1))
    binom = torch.where(k <= n[:, None], torch.exp(log_binom).round(), torch.zeros((), dtype=torch.float64))
    sign = torch.where(k % 2 == 1, 1.0, -1.0)
    terms = binom * sign * torch.pow(o_new[:, None], k) / torch.sqrt(k)
    denom = terms.sum(dim=1)
    s_new = scales.double() * (o / denom)[:, None]
    return o_new.to(opacities.dtype), s_new.to(scales.dtype)


class MCMC(Strategy):
    """3DGS-MCMC with ``params``; ``position_lr(iteration)`` is the position learning rate that
    scales the noise (3DGS's schedule, whatever the optimiser); ``seed`` seeds the sampling and
    the noise (the generator is saved for ``--resume``)."""

    def __init__(self, params: MCMCParams, *, position_lr: Callable[[int], float], seed: int = 0) -> None:
        ops.inherits(params.state_policy, "")
        self.params = params
        self.position_lr = position_lr
        self.generator = StrategyGenerator(seed + 6007)
        self.history: list[dict[str, int]] = []

    def step_post_backward(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, info: StepInfo) -> None:
        p = self.params
        it = info.iteration
        self.add_regularizer_grads(gaussians, it)
        if p.start < it < p.stop and it % p.every == 0:
            relocated = self.relocate(gaussians, optimizer)
            added = self.grow(gaussians, optimizer)
            record = {"iteration": it, "relocated": relocated, "added": added, "after": len(gaussians)}
            self.history.append(record)
            info.extras["densify"] = record
        self.add_noise(gaussians, self.position_lr(it), optimizer)

    # -- pieces -------------------------------------------------------------------------------
    @torch.no_grad()
    def add_regularizer_grads(self, gaussians: Gaussians, iteration: int = 0) -> None:
        """Gradients of opacity_reg · mean(sigmoid(l)) and scale_reg · mean(exp(log s)) (the
        L1 norms of positive quantities), added to ``.grad`` after the gradient sync; with
        ``opacity_reg_until_stop`` the opacity term ends at ``stop``, after the last relocation."""
        p = self.params
        grads = {}
        if p.opacity_reg > 0 and not (p.opacity_reg_until_stop and iteration >= p.stop):
            o = gaussians.opacities.detach()
            grads["opacity_logits"] = p.opacity_reg * o * (1 - o) / o.numel()
        if p.scale_reg > 0:
            s = gaussians.scales.detach()
            grads["log_scales"] = p.scale_reg * s / s.numel()
        ops.add_to_grad(gaussians, grads)

    @torch.no_grad()
    def relocate(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer) -> int:
        """Move every dead Gaussian onto a live one drawn ∝ opacity; returns how many moved."""
        p = self.params
        opacities = gaussians.opacities.detach()
        dead = torch.nonzero(opacities <= p.min_opacity).squeeze(1)
        alive = torch.nonzero(opacities > p.min_opacity).squeeze(1)
        if not len(dead) or not len(alive):
            return 0
        sources = alive[self._sample(opacities[alive], len(dead))]
        self._share(gaussians, optimizer, sources)
        ops.set_rows(gaussians, optimizer, dead, {}, sources=sources, policy=p.state_policy)
        return len(dead)

    @torch.no_grad()
    def grow(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer) -> int:
        """Add min(cap_max, ⌊(1 + grow_rate) N⌋) − N Gaussians as copies of ones drawn ∝ opacity."""
        p = self.params
        n = len(gaussians)
        n_new = max(0, min(p.cap_max, int((1.0 + p.grow_rate) * n)) - n)
        weights = gaussians.opacities.detach()
        if not n_new or not bool(weights.sum() > 0):  # nothing to copy: every opacity 0 (or not finite)
            return 0
        sources = self._sample(weights, n_new)
        self._share(gaussians, optimizer, sources)
        new = {k: v.detach()[sources] for k, v in gaussians.params().items()}
        ops.append(gaussians, optimizer, new, parents=sources, policy=p.state_policy)
        return n_new

    def _share(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, sources: torch.Tensor) -> None:
        """Give each drawn source the opacity and scale of one of its n = (times drawn + 1) parts."""
        ratios = torch.bincount(sources, minlength=len(gaussians))[sources] + 1
        o_new, s_new = relocation(gaussians.opacities.detach()[sources], gaussians.scales.detach()[sources],
                                  ratios, self.params.min_opacity)
        values = {"opacity_logits": torch.logit(o_new), "log_scales": torch.log(s_new)}
        ops.set_rows(gaussians, optimizer, sources, values, policy=self.params.state_policy)

    @torch.no_grad()
    def add_noise(self, gaussians: Gaussians, lr: float, optimizer: torch.optim.Optimizer | None = None) -> None:
        """means += lr · noise_lr · σ(−k(o − t)) · Σ ε: exploration where the opacity is low.
        With ``noise_in_radius`` and a trust-region ``optimizer``, each noise coordinate is
        clipped to the Hellinger position radius at the optimizer's current ε."""
        p = self.params
        if p.noise_lr <= 0:
            return
        means = gaussians.means.detach()
        eps = torch.randn(means.shape, generator=self.generator.on(means.device), device=means.device)
        gate = torch.sigmoid(-p.noise_k * (gaussians.opacities.detach() - p.noise_t))
        rot = rotation_matrices(gaussians.quats.detach())
        var = gaussians.scales.detach() ** 2
        # Σ ε = R diag(s²) Rᵀ ε
        noise = (rot @ (var * (rot.transpose(1, 2) @ eps[:, :, None]).squeeze(-1))[:, :, None]).squeeze(-1)
        noise = noise * (gate * lr * p.noise_lr)[:, None]
        if p.noise_in_radius and isinstance(optimizer, WithTrustRegion):
            params, eps = named_params(optimizer.param_groups), group_eps(optimizer.param_groups)
            # (eps: the scheduled ε; an adaptive radius's κ is not applied)
            noise = optimizer.trust_region.clip(params, {"means": noise}, eps)[0]["means"]
        ops.perturb(gaussians, "means", noise)

    def _sample(self, weights: torch.Tensor, n: int) -> torch.Tensor:
        """``n`` indices drawn with replacement with probability ∝ ``weights``."""
        return torch.multinomial(weights, n, replacement=True, generator=self.generator.on(weights.device))

    # -- records and resume ---------------------------------------------------------------------
    def records(self) -> list[dict[str, int]]:
        return list(self.history)

    def state_dict(self) -> dict[str, Any]:
        return {"params": asdict(self.params), "generator": self.generator.state_dict(),
                "history": list(self.history)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the generator; the schedule comes from the config (a resume that
        extends ``--iters`` re-spans it, as the optimiser's schedules)."""
        if not state:
            return
        self.generator.load_state_dict(state["generator"])
        self.history = list(state["history"])
