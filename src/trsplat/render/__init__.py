"""Differentiable Gaussian rendering: projection (torch) + tile binning + compositing (backend).

``render`` works under reverse mode, forward mode (``torch.func.jvp``,
``torch.autograd.forward_ad``) and, for tiny scenes with the ``reference`` backend, dense
Jacobians. Backends choose the compositor and the derivative kernels of the projection; see
:mod:`trsplat.render.backends`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trsplat.camera import Camera
from trsplat.gaussians import Gaussians
from trsplat.render.backends import get_compositor, get_projector
from trsplat.render.tiles import bin_splats


@dataclass
class RenderOutput:
    """What :func:`render` returns.

    Attributes:
        image: (H, W, 3) RGB, not clamped (as INRIA).
        alpha: (H, W) accumulated opacity 1 − T_final.
        depth: (H, W) Σ z·α·T (not normalised by alpha, as INRIA's 2024 rasterizer).
        visible: (N,) bool, Gaussians that reached at least one tile.
        radii: (N,) int64 screen radius in pixels (0 where culled).
    """

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    visible: torch.Tensor
    radii: torch.Tensor


def render(
    gaussians: Gaussians,
    camera: Camera,
    *,
    sh_degree: int = 3,
    background: torch.Tensor | tuple[float, float, float] = (1.0, 1.0, 1.0),
    backend: str = "reference",
) -> RenderOutput:
    """Render ``gaussians`` seen from ``camera`` with the INRIA 3DGS conventions."""
    g = gaussians
    device = g.means.device
    bg = torch.as_tensor(background, dtype=g.means.dtype, device=device)
    proj = get_projector(backend)(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh, camera, sh_degree)
    bins = bin_splats(proj.means2d, proj.radii, proj.depths, camera.width, camera.height, proj.conics, proj.opacities)
    features = torch.cat([proj.colors, proj.depths[:, None]], dim=1)
    feat_bg = torch.cat([bg, torch.zeros(1, dtype=bg.dtype, device=device)])
    composite = get_compositor(backend)
    out, alpha = composite(
        proj.means2d, proj.conics, features, proj.opacities, bins,
        camera.width, camera.height, feat_bg,
    )
    n = len(g)
    radii = torch.zeros(n, dtype=torch.int64, device=device)
    radii[proj.ids] = proj.radii
    visible = torch.zeros(n, dtype=torch.bool, device=device)
    visible[proj.ids] = True
    return RenderOutput(image=out[..., :3], alpha=alpha, depth=out[..., 3], visible=visible, radii=radii)
