"""Closed-form squared Hellinger distance between Gaussians: the ground truth the trust region's
radii are checked against (``tests/test_hellinger.py``; conventions in ``docs/trust_region.md``)."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from trsplat.optim.hellinger import SH_C0, _rotation_matrix, _unit_quats


def hellinger_sq(mu1: Tensor, cov1: Tensor, mass1: Tensor, mu2: Tensor, cov2: Tensor, mass2: Tensor) -> Tensor:
    """Squared Hellinger distance of eq. (6), full convention, between Z·N(µ, Σ) and Z′·N(µ′, Σ′).

    H² = Z + Z′ − 2·sqrt(Z Z′)·BC with the Bhattacharyya coefficient
    BC = det(Σ)^¼ det(Σ′)^¼ / det(Σ̄)^½ · exp(−Δµᵀ Σ̄⁻¹ Δµ / 8), Σ̄ = (Σ + Σ′)/2, evaluated as
    (√Z − √Z′)² + 2√(ZZ′)(1 − BC) without cancellation.  Shapes: µ (...,3), Σ (...,3,3) SPD,
    Z (...) ≥ 0; returns (...).  With Z = α·det S this is ∫(√G − √G′)²dz/(2π)^{3/2} for
    G = α·exp(−½(z−µ)ᵀΣ⁻¹(z−µ)).
    """
    cov_bar = 0.5 * (cov1 + cov2)
    chol_bar = torch.linalg.cholesky(cov_bar)
    diff = (mu1 - mu2).unsqueeze(-1)
    sol = torch.cholesky_solve(diff, chol_bar)
    maha = (diff * sol).sum(dim=(-2, -1))

    def logdet(chol: Tensor) -> Tensor:
        return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    log_bc = (0.25 * logdet(torch.linalg.cholesky(cov1)) + 0.25 * logdet(torch.linalg.cholesky(cov2))
              - 0.5 * logdet(chol_bar) - maha / 8.0)
    return (torch.sqrt(mass1) - torch.sqrt(mass2)) ** 2 - 2.0 * torch.sqrt(mass1 * mass2) * torch.expm1(log_bc)


def gaussian_moments(params: Mapping[str, Tensor], dtype: torch.dtype = torch.float64,
                     sh_c0: float = SH_C0) -> dict[str, Tensor]:
    """Physical quantities of raw Gaussians in ``dtype``.

    Returns ``mu`` (N,3), ``cov`` (N,3,3) = R diag(s²) Rᵀ, ``det_s`` (N,) = Π s, ``alpha`` (N,)
    and ``color`` (N,3) = sh_c0·dc + 0.5 (when ``sh_dc`` is present).
    """
    ls = params["log_scales"].to(dtype)
    rot = _rotation_matrix(_unit_quats(params["quats"], dtype)[0])
    cov = rot @ torch.diag_embed(torch.exp(2.0 * ls)) @ rot.transpose(-1, -2)
    out = {"mu": params["means"].to(dtype), "cov": cov, "det_s": torch.exp(ls.sum(-1)),
           "alpha": torch.sigmoid(params["opacity_logits"].to(dtype))}
    if "sh_dc" in params:
        out["color"] = sh_c0 * params["sh_dc"].to(dtype).reshape(-1, 3) + 0.5
    return out


def normalized_hellinger_sq(params: Mapping[str, Tensor], new_params: Mapping[str, Tensor],
                            color: bool = False, dtype: torch.dtype = torch.float64) -> Tensor:
    """H²(G, G′)/det S(G) between raw Gaussians ``params`` and ``new_params`` (full convention).

    ``color=False``: mass Z = α·det S, returns (N,).  ``color=True``: per-channel mass
    Z = α·max(C, 0)·det S, returns (N,3).  Used to validate the trust region (rebuttal exp5).
    """
    a, b = gaussian_moments(params, dtype), gaussian_moments(new_params, dtype)
    za, zb = a["alpha"] * a["det_s"], b["alpha"] * b["det_s"]
    if color:
        za = za[:, None] * a["color"].clamp_min(0.0)
        zb = zb[:, None] * b["color"].clamp_min(0.0)
        h2 = hellinger_sq(a["mu"][:, None], a["cov"][:, None], za, b["mu"][:, None], b["cov"][:, None], zb)
        return h2 / a["det_s"][:, None]
    return hellinger_sq(a["mu"], a["cov"], za, b["mu"], b["cov"], zb) / a["det_s"]
