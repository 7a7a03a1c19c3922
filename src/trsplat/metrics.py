"""Evaluation metrics: PSNR, SSIM and LPIPS, computed as 3DGS does (plus corrected LPIPS).

Image convention: float tensors, channel-last RGB, ``(H, W, 3)`` or a batch ``(B, H, W, 3)``,
values in ``[0, 1]``. Every metric first clamps both images to ``[0, 1]`` (3DGS clamps its
renders before saving/evaluating them). For a batch, each metric is computed per image and
averaged over the images (3DGS reports the mean over test views). Results are Python floats.

LPIPS conventions — read this before comparing numbers
------------------------------------------------------
The LPIPS network (``lpips.LPIPS``, v0.1) expects inputs in ``[-1, 1]``. The 3DGS evaluation
script (``metrics.py`` → ``lpipsPyTorch.lpips(render, gt, net_type="vgg")``) passes its
``[0, 1]`` images to the network **unchanged**, i.e. as if they were already in ``[-1, 1]``.
Numbers in the 3DGS paper and in papers that reuse its script (including 3DGS²-TR) therefore
use that convention. We report both:

* ``lpips`` — **3DGS convention**: VGG trunk, ``x ∈ [0, 1]`` fed directly. Comparable with the
  3DGS / 3DGS²-TR tables.
* ``lpips_corrected`` — **standard convention**: VGG trunk, input ``2x − 1`` (what
  ``lpips.LPIPS(...)(x, y, normalize=True)`` does).
* ``lpips_alex`` — standard convention with the AlexNet trunk (what many NeRF papers report).

The two conventions give different values for the same images (neither is systematically
larger); never mix them in one table. On CPU, LPIPS-VGG of a ~1 MPix image takes tens of
seconds on a few cores: skip it with ``evaluate_images(..., lpips=False)`` when not needed.
"""

from __future__ import annotations

from typing import Literal

import torch

from trsplat import loss as _loss
from trsplat.lpips_net import NetName, get_lpips

__all__ = [
    "LpipsConvention",
    "evaluate_images",
    "lpips",
    "psnr",
    "quantize_8bit",
    "ssim",
]

LpipsConvention = Literal["3dgs", "standard"]


def _prepare(img: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a pair, add a batch dim, clamp to [0, 1]; returns ``(B, H, W, C)`` float tensors."""
    if img.shape != gt.shape:
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(gt.shape)}")
    if img.dim() == 3:
        img, gt = img.unsqueeze(0), gt.unsqueeze(0)
    if img.dim() != 4:
        raise ValueError(
            f"expected an image of shape (H, W, C) or (B, H, W, C), got {tuple(img.shape)}"
        )
    if not img.is_floating_point():
        img = img.float()
    gt = gt.to(dtype=img.dtype, device=img.device)
    return img.detach().clamp(0.0, 1.0), gt.detach().clamp(0.0, 1.0)


def quantize_8bit(img: torch.Tensor) -> torch.Tensor:
    """Round a ``[0, 1]`` image to 8 bits and back, as saving a PNG and re-reading it does
    (3DGS evaluates its renders from saved PNGs): ``floor(clamp(x, 0, 1)·255 + 0.5) / 255``."""
    return torch.floor(img.clamp(0.0, 1.0) * 255.0 + 0.5) / 255.0


@torch.no_grad()
def psnr(img: torch.Tensor, gt: torch.Tensor) -> float:
    """PSNR in dB, 3DGS ``utils/image_utils.psnr``: ``20·log10(1 / sqrt(mse))`` with the MSE over
    all pixels and channels of one image (peak value 1); mean over images for a batch.

    Images are clamped to ``[0, 1]`` first. Identical images give ``inf``.
    """
    a, b = _prepare(img, gt)
    mse = ((a - b) ** 2).flatten(1).mean(dim=1).double()
    values = 20.0 * torch.log10(1.0 / torch.sqrt(mse))
    return float(values.mean())


@torch.no_grad()
def ssim(img: torch.Tensor, gt: torch.Tensor) -> float:
    """Mean SSIM (3DGS ``utils/loss_utils.ssim``: 11×11 Gaussian window, σ = 1.5, zero padding,
    ``C1 = 0.01²``, ``C2 = 0.03²``), images clamped to ``[0, 1]``; mean over images."""
    a, b = _prepare(img, gt)
    return float(_loss.ssim_map(a, b).flatten(1).mean(dim=1).mean())


@torch.no_grad()
def lpips(
    img: torch.Tensor,
    gt: torch.Tensor,
    *,
    net: NetName = "vgg",
    convention: LpipsConvention = "3dgs",
) -> float:
    """LPIPS v0.1 distance (dimensionless, ≥ 0, lower is better); mean over images.

    Args:
        img, gt: ``(H, W, 3)`` or ``(B, H, W, 3)`` in ``[0, 1]`` (clamped).
        net: ``"vgg"`` (3DGS) or ``"alex"``.
        convention: ``"3dgs"`` feeds the ``[0, 1]`` image to the network unchanged, as the 3DGS
            evaluation script does (comparable with 3DGS / 3DGS²-TR tables); ``"standard"``
            feeds ``2x − 1`` (the range the network was trained for; ``normalize=True`` in
            ``lpips``).

    The network is loaded once per (net, device) and runs on the device of ``img``.
    """
    if convention not in ("3dgs", "standard"):
        raise ValueError(f"unknown LPIPS convention {convention!r}; expected '3dgs' or 'standard'")
    a, b = _prepare(img, gt)
    if a.shape[-1] != 3:
        raise ValueError(f"LPIPS needs RGB images (3 channels), got shape {tuple(img.shape)}")
    x = a.permute(0, 3, 1, 2).float().contiguous()
    y = b.permute(0, 3, 1, 2).float().contiguous()
    if convention == "standard":
        x, y = 2.0 * x - 1.0, 2.0 * y - 1.0
    model = get_lpips(net, x.device)
    return float(model(x, y).mean())


METRIC_KEYS = ("psnr", "ssim")
LPIPS_KEYS = ("lpips", "lpips_corrected", "lpips_alex")
"""The keys of :func:`evaluate_images` (the LPIPS ones only with ``lpips=True``)."""


@torch.no_grad()
def evaluate_images(
    img: torch.Tensor,
    gt: torch.Tensor,
    *,
    lpips: bool = True,
    quantize: bool = False,
) -> dict[str, float]:
    """All evaluation metrics for one image (or the mean over a batch).

    Args:
        img: render ``(H, W, 3)`` or ``(B, H, W, 3)``, values in ``[0, 1]`` (clamped).
        gt: ground truth, same shape.
        lpips: compute the three LPIPS values (two VGG16 and one AlexNet pass; the slow part on
            CPU). If False, the ``lpips*`` keys are absent.
        quantize: round both images to 8 bits first (:func:`quantize_8bit`), reproducing 3DGS,
            which evaluates renders saved as PNG.

    Returns:
        ``{"psnr": dB, "ssim": ..., "lpips": VGG / 3DGS convention,
        "lpips_corrected": VGG / standard convention, "lpips_alex": AlexNet / standard
        convention}`` (see the module docstring for the two LPIPS conventions).
    """
    a, b = _prepare(img, gt)
    if quantize:
        a, b = quantize_8bit(a), quantize_8bit(b)
    out: dict[str, float] = {"psnr": psnr(a, b), "ssim": ssim(a, b)}
    if lpips:
        out["lpips"] = _lpips_value(a, b, net="vgg", convention="3dgs")
        out["lpips_corrected"] = _lpips_value(a, b, net="vgg", convention="standard")
        out["lpips_alex"] = _lpips_value(a, b, net="alex", convention="standard")
    return out


_lpips_value = lpips  # `evaluate_images` has a parameter named `lpips`
