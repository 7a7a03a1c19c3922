"""Differentiable Gaussian rendering: projection (torch) + tile binning + compositing (backend).

``render`` works under reverse mode, forward mode (``torch.func.jvp``,
``torch.autograd.forward_ad``) and, for tiny scenes with the ``reference`` backend, dense
Jacobians. The backend (:mod:`trsplat.render.backends`) chooses the three stages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trsplat.camera import Camera
from trsplat.gaussians import Gaussians
from trsplat.render.backends import get_backend, resolve_backend


@dataclass
class RenderOutput:
    """What :func:`render` returns.

    Attributes:
        image: (H, W, 3) RGB, not clamped (as INRIA).
        alpha: (H, W) accumulated opacity 1 − T_final.
        depth: (H, W) Σ z·α·T (not normalised by alpha, as INRIA's 2024 rasterizer).
        visible: (N,) bool, Gaussians that reached at least one tile.
        radii: (N,) int64 screen radius in pixels (0 where culled).
        means2d: (N, 2) screen positions in pixel-index coordinates (0 where culled), a node of
            the autograd graph through which the compositor reads the splat centres: call
            ``means2d.retain_grad()`` before ``backward`` to get dL/d(screen position) in px⁻¹
            units (what adaptive density control thresholds; ``docs/densification.md``).
    """

    image: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    visible: torch.Tensor
    radii: torch.Tensor
    means2d: torch.Tensor


def render(
    gaussians: Gaussians,
    camera: Camera,
    *,
    sh_degree: int = 3,
    background: torch.Tensor | tuple[float, float, float] = (1.0, 1.0, 1.0),
    backend: str = "reference",
) -> RenderOutput:
    """Render ``gaussians`` seen from ``camera`` with the INRIA 3DGS conventions.

    ``backend``: a name of :data:`trsplat.render.backends.BACKENDS` or ``"auto"``.
    """
    g = gaussians
    device = g.means.device
    stages = get_backend(resolve_backend(backend))
    bg = torch.as_tensor(background, dtype=g.means.dtype, device=device)
    proj = stages.project(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest,
                          camera, sh_degree)
    bins = stages.bin(proj.means2d, proj.radii, proj.depths, camera.width, camera.height, proj.conics,
                      proj.opacities)
    features = torch.cat([proj.colors, proj.depths[:, None]], dim=1)
    feat_bg = torch.cat([bg, torch.zeros(1, dtype=bg.dtype, device=device)])
    n = len(g)
    # the screen positions in full indexing, read back by the compositor: copies only, so images,
    # gradients and tangents are unchanged, and means2d.grad is dL/d(screen position)
    means2d = proj.means2d.new_zeros((n, 2)).index_copy(0, proj.ids, proj.means2d)
    out, alpha = stages.composite(
        means2d[proj.ids], proj.conics, features, proj.opacities, bins,
        camera.width, camera.height, feat_bg,
    )
    radii = torch.zeros(n, dtype=torch.int64, device=device)
    radii[proj.ids] = proj.radii
    visible = torch.zeros(n, dtype=torch.bool, device=device)
    visible[proj.ids] = True
    return RenderOutput(image=out[..., :3], alpha=alpha, depth=out[..., 3], visible=visible, radii=radii,
                        means2d=means2d)
