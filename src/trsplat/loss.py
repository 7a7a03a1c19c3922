"""Photometric training loss of 3DGS and its least-squares residual forms.

Image convention
----------------
Every function here takes images as float tensors laid out channel-last, ``(H, W, C)``
(normally ``C = 3``, RGB, values nominally in ``[0, 1]``), or with a leading batch dimension,
``(B, H, W, C)``. Both images of a pair must have the same shape, dtype and device. Nothing is
clamped here: the loss sees the rendered values as they are.

All functions are built from ordinary differentiable PyTorch ops (``conv2d``, ``abs``, ``sqrt``,
...), so they work with reverse-mode autograd and with forward-mode AD
(:mod:`torch.autograd.forward_ad`, :func:`torch.func.jvp`), which the 3DGS²-TR optimizer uses for
its Gauss–Newton products.

Loss (3DGS, ``utils/loss_utils.py``)
------------------------------------
``L = (1 - λ) · L1 + λ · (1 - SSIM)`` with ``λ = 0.2``, where ``L1 = mean |img - gt|`` and
``SSIM`` is the mean of the SSIM map over all pixels, channels (and images of a batch).

Residual form (3DGS²-TR, docs/optimizer.md "How JᵀJz is computed")
----------------------------------------------------------------------
:func:`residuals` returns a flat vector ``r`` whose squared norm reproduces the loss, so that the
optimizer can treat the loss as a nonlinear least-squares problem ``½‖r‖²`` with Jacobian ``J``
and Gauss–Newton matrix ``JᵀJ``. See its docstring for the exact definitions.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

__all__ = [
    "SSIM_C1",
    "SSIM_C2",
    "SSIM_SIGMA",
    "SSIM_WINDOW_SIZE",
    "ResidualForm",
    "gaussian_window_1d",
    "l1",
    "residual_loss",
    "residuals",
    "ssim",
    "ssim_map",
    "training_loss",
]

SSIM_WINDOW_SIZE: int = 11
"""Side of the square Gaussian SSIM window in pixels (3DGS: 11)."""
SSIM_SIGMA: float = 1.5
"""Standard deviation of the SSIM Gaussian window in pixels (3DGS: 1.5)."""
SSIM_C1: float = 0.01**2
"""SSIM luminance stabiliser ``(K1·L)²`` with ``K1 = 0.01`` and dynamic range ``L = 1``."""
SSIM_C2: float = 0.03**2
"""SSIM contrast stabiliser ``(K2·L)²`` with ``K2 = 0.03`` and dynamic range ``L = 1``."""

ResidualForm = Literal["sqrt", "l2"]


def _check_pair(img1: torch.Tensor, img2: torch.Tensor) -> None:
    if img1.shape != img2.shape:
        raise ValueError(f"image shapes differ: {tuple(img1.shape)} vs {tuple(img2.shape)}")
    if img1.dim() not in (3, 4):
        raise ValueError(
            f"expected an image of shape (H, W, C) or (B, H, W, C), got {tuple(img1.shape)}"
        )


@functools.lru_cache(maxsize=32)
def _window_cached(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    xs = [math.exp(-((x - size // 2) ** 2) / (2.0 * sigma**2)) for x in range(size)]
    total = math.fsum(xs)
    return torch.tensor([x / total for x in xs], dtype=torch.float64).to(dtype=dtype, device=device)


def gaussian_window_1d(
    size: int = SSIM_WINDOW_SIZE,
    sigma: float = SSIM_SIGMA,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Normalised 1-D Gaussian window ``g[k] ∝ exp(-(k - size//2)² / (2σ²))``, shape ``(size,)``.

    The 2-D SSIM window of 3DGS is the outer product ``g gᵀ`` (it sums to 1).
    """
    return _window_cached(int(size), float(sigma), dtype, torch.device(device))


def _gaussian_blur_nchw(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Per-channel 'same' Gaussian filtering with zero padding, ``(N, C, H, W) -> (N, C, H, W)``.

    Implemented as two 1-D grouped convolutions (rows then columns). With zero padding this is
    mathematically identical to 3DGS's single 2-D grouped convolution with the window ``g gᵀ``
    and ``padding = size // 2``; only the float rounding differs (~1e-7).
    """
    c = x.shape[1]
    k = window.numel()
    pad = k // 2
    w_h = window.view(1, 1, 1, k).expand(c, 1, 1, k)
    w_v = window.view(1, 1, k, 1).expand(c, 1, k, 1)
    x = F.conv2d(x, w_h, padding=(0, pad), groups=c)
    return F.conv2d(x, w_v, padding=(pad, 0), groups=c)


def ssim_map(
    img1: torch.Tensor,
    img2: torch.Tensor,
    *,
    window_size: int = SSIM_WINDOW_SIZE,
    sigma: float = SSIM_SIGMA,
) -> torch.Tensor:
    """Per-pixel, per-channel SSIM map exactly as 3DGS computes it (``utils/loss_utils.py``).

    Local statistics use an ``window_size``² Gaussian window (σ = ``sigma`` px) applied to each
    channel separately with zero 'same' padding (so values near the border see zeros), and

        ssim = ((2 μ1 μ2 + C1)(2 σ12 + C2)) / ((μ1² + μ2² + C1)(σ1² + σ2² + C2)),

    with ``σ1² = E[x1²] - μ1²`` etc., ``C1 = 0.01²`` and ``C2 = 0.03²`` (dynamic range 1).

    Args:
        img1, img2: images ``(H, W, C)`` or ``(B, H, W, C)``, same shape/dtype/device.
    Returns:
        SSIM values, same shape as the inputs (dimensionless, ≤ 1 for non-negative images).
    """
    _check_pair(img1, img2)
    batched = img1.dim() == 4
    a = img1 if batched else img1.unsqueeze(0)
    b = img2 if batched else img2.unsqueeze(0)
    a = a.permute(0, 3, 1, 2)  # (B, C, H, W)
    b = b.permute(0, 3, 1, 2)
    c = a.shape[1]
    window = gaussian_window_1d(window_size, sigma, dtype=a.dtype, device=a.device)
    # One grouped filtering pass for all five moment images.
    stats = _gaussian_blur_nchw(torch.cat([a, b, a * a, b * b, a * b], dim=1), window)
    mu1, mu2, e11, e22, e12 = torch.split(stats, c, dim=1)
    mu1_sq = mu1 * mu1
    mu2_sq = mu2 * mu2
    mu12 = mu1 * mu2
    sigma1_sq = e11 - mu1_sq
    sigma2_sq = e22 - mu2_sq
    sigma12 = e12 - mu12
    num = (2.0 * mu12 + SSIM_C1) * (2.0 * sigma12 + SSIM_C2)
    den = (mu1_sq + mu2_sq + SSIM_C1) * (sigma1_sq + sigma2_sq + SSIM_C2)
    out = (num / den).permute(0, 2, 3, 1)
    return out if batched else out.squeeze(0)


def ssim(img1: torch.Tensor, img2: torch.Tensor) -> torch.Tensor:
    """Mean SSIM (3DGS): the mean of :func:`ssim_map` over all pixels, channels and images.

    Args:
        img1, img2: ``(H, W, C)`` or ``(B, H, W, C)``.
    Returns:
        0-dim tensor (dimensionless; 1 for identical images).
    """
    return ssim_map(img1, img2).mean()


def l1(img: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean absolute error ``mean |img - gt|`` over all elements, as a 0-dim tensor."""
    _check_pair(img, gt)
    return (img - gt).abs().mean()


def training_loss(img: torch.Tensor, gt: torch.Tensor, lambda_dssim: float = 0.2) -> torch.Tensor:
    """The 3DGS photometric loss ``(1 - λ)·L1 + λ·(1 - SSIM)``, 0-dim tensor.

    Args:
        img: rendered image ``(H, W, 3)`` or ``(B, H, W, 3)``.
        gt: ground truth, same shape.
        lambda_dssim: λ, the D-SSIM weight (3DGS default 0.2).
    """
    return (1.0 - lambda_dssim) * l1(img, gt) + lambda_dssim * (1.0 - ssim(img, gt))


def residuals(
    img: torch.Tensor,
    gt: torch.Tensor,
    *,
    form: ResidualForm = "sqrt",
    lambda_dssim: float = 0.2,
    delta: float = 1e-6,
) -> torch.Tensor:
    """Residual vector ``r`` for the Gauss–Newton view of the loss (3DGS²-TR; docs/optimizer.md).

    Let ``n = img.numel()`` (``3·H·W`` for one RGB image, ``B·3·H·W`` for a batch), ``e = img - gt``
    and, per pixel-channel, the loss components ``ℓ_L1 = |e|`` and
    ``ℓ_S = max(1 - ssim_map, 0)`` with weights ``w_L1 = 1 - λ`` and ``w_S = λ``. The training
    loss is ``L = Σ w_L1·ℓ_L1/n + Σ w_S·(1 - ssim_map)/n`` (:func:`training_loss`).

    ``form="sqrt"`` (the paper: square roots of the loss components)::

        r_L1 = sqrt(2·w_L1·(ℓ_L1 + δ) / n),   r_S = sqrt(2·w_S·(ℓ_S + δ) / n)

    i.e. ``δ`` is added to each per-pixel loss component *before* the ``1/n`` scaling (in the
    form ``sqrt(2wℓ/n + δ')`` of the spec, ``δ' = 2wδ/n``). Consequences:

    * ``½‖r‖² = L + δ·(w_L1 + w_S) = L + δ`` exactly (up to the clamp of ``1 - ssim_map`` at 0,
      which only acts on float-rounding-level negative values), so the loss is reproduced up to
      a constant and ``∇(½‖r‖²) = ∇L`` (same subgradient convention ``sign(0) = 0``).
    * The Jacobian stays finite where ``ℓ = 0``: for one L1 entry the Gauss–Newton weight is
      ``(∂r)² = w/(2n) · (∂e)² / (|e| + δ)`` (IRLS-like), so ``δ`` is a threshold in the units of
      the per-pixel error (intensity), independent of the image resolution, like the authors'
      ``sqrt(|e| + 1e-6)``. ``delta`` must be > 0 for a finite Jacobian.

    ``form="l2"`` (L2 surrogate, ablation; the authors' earlier LM code)::

        r_L1 = sqrt(2·w_L1 / n) · e,   r_S = sqrt(2·w_S / n) · (1 - ssim_map)

    Here ``½‖r‖² = (1-λ)·mean(e²) + λ·mean((1 - ssim_map)²)`` — an L2 loss, **not** the training
    loss (and not its gradient). ``delta`` is unused.

    Args:
        img: rendered image ``(H, W, 3)`` or ``(B, H, W, 3)`` (differentiable input).
        gt: ground truth, same shape.
        form: ``"sqrt"`` (default) or ``"l2"``.
        lambda_dssim: λ (3DGS default 0.2).
        delta: stabiliser δ ≥ 0 of the ``"sqrt"`` form, in per-pixel loss units.
    Returns:
        Flat tensor of length ``2n``: ``[r_L1.flatten(), r_S.flatten()]``, each block in the
        row-major order of ``img`` (``(…, H, W, C)``).

    Forward-mode AD under autograd (a dual ``img`` of :mod:`torch.autograd.forward_ad` whose
    primal requires grad, as in the Gauss–Newton products): ``r``'s tangent is computed first and
    without a graph (it is not differentiable), then its primal with one. Same values; the graph
    autograd would record for the tangent holds the SSIM's intermediates (peak memory).
    """
    img_primal, img_tangent = fwAD.unpack_dual(img)
    if img_tangent is not None and img_primal.requires_grad and torch.is_grad_enabled():
        with torch.no_grad():  # first, so that its intermediates are freed before the graph is built
            dual = fwAD.make_dual(img_primal, img_tangent)
            r_tangent = fwAD.unpack_dual(_residuals(dual, gt, form, lambda_dssim, delta)).tangent
        return fwAD.make_dual(_residuals(img_primal, gt, form, lambda_dssim, delta), r_tangent)
    return _residuals(img, gt, form, lambda_dssim, delta)


def _residuals(img: torch.Tensor, gt: torch.Tensor, form: ResidualForm, lambda_dssim: float,
               delta: float) -> torch.Tensor:
    _check_pair(img, gt)
    if not 0.0 <= lambda_dssim <= 1.0:
        raise ValueError(f"lambda_dssim must be in [0, 1], got {lambda_dssim}")
    n = img.numel()
    w_l1 = 1.0 - lambda_dssim
    w_s = lambda_dssim
    err = img - gt
    dssim = 1.0 - ssim_map(img, gt)
    if form == "sqrt":
        if delta < 0.0:
            raise ValueError(f"delta must be >= 0, got {delta}")
        # A zero-weight block is returned as constant zeros: sqrt(0·x) would give 0·inf = NaN
        # in the derivative.
        r_l1 = (
            torch.sqrt((2.0 * w_l1 / n) * (err.abs() + delta))
            if w_l1 > 0.0
            else torch.zeros_like(err)
        )
        r_s = (
            torch.sqrt((2.0 * w_s / n) * (dssim.clamp_min(0.0) + delta))
            if w_s > 0.0
            else torch.zeros_like(dssim)
        )
    elif form == "l2":
        r_l1 = math.sqrt(2.0 * w_l1 / n) * err
        r_s = math.sqrt(2.0 * w_s / n) * dssim
    else:
        raise ValueError(f"unknown residual form {form!r}; expected 'sqrt' or 'l2'")
    return torch.cat([r_l1.reshape(-1), r_s.reshape(-1)])


def residual_loss(r: torch.Tensor) -> torch.Tensor:
    """``½‖r‖²`` of a residual vector from :func:`residuals` (0-dim tensor)."""
    return 0.5 * (r * r).sum()
