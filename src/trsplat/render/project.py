"""Projection of 3D Gaussians to screen-space splats, following the INRIA rasterizer.

Plain torch ops, so reverse mode, forward mode and dense Jacobians all work. Conventions
(INRIA's, summarised in ``docs/training.md``): near culling at z <= 0.2, covariance R S Sᵀ Rᵀ, the
Jacobian's x/z and y/z clamped to 1.3x the field of view, a 0.3 px² low-pass, radius
ceil(3 sqrt(λ_max)) with λ's discriminant floored at 0.1, colour = max(SH + 0.5, 0).

Departure (documented): the screen mean uses the camera's principal point,
``u = fx·x/z + cx - 0.5`` in pixel-index coordinates (pixel centres at integers). With
cx = W/2 this is INRIA's ``ndc2Pix``; INRIA ignores COLMAP's cx, cy.

Only Gaussians that survive culling are carried forward, and they are selected *before* any
division by depth, so culled Gaussians receive exact zero gradients and tangents (no 0·inf).

Precision: float32 (or lower) inputs are computed in float64 and the outputs rounded back to the
input dtype. The projection is cheap next to compositing, and float64 makes its result
independent of how the arithmetic is ordered: the numba projection of the ``cpu`` backend
(:mod:`trsplat.render.cpu_project`) then produces the same float32 splats, so the two backends
feed the compositor identical inputs, and its hard thresholds (α < 1/255, T < 1e-4) cannot
turn float32 rounding noise into visibly different pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trsplat.camera import Camera
from trsplat.render.sh import eval_sh

NEAR_PLANE = 0.2
LOW_PASS = 0.3
FOV_CLAMP = 1.3


@dataclass
class Projected:
    """Screen-space splats of the V Gaussians that survive culling.

    Attributes:
        ids: (V,) int64 indices into the input Gaussians.
        means2d: (V, 2) pixel-index coordinates (pixel centres at integers).
        conics: (V, 3) inverse 2D covariance (a, b, c) in px⁻²: power = -½(a dx² + c dy²) - b dx dy.
        depths: (V,) view-space z.
        radii: (V,) int64 pixel radius, > 0.
        colors: (V, 3) RGB, clamped at 0 only.
        opacities: (V,) in (0, 1).
    """

    ids: torch.Tensor
    means2d: torch.Tensor
    conics: torch.Tensor
    depths: torch.Tensor
    radii: torch.Tensor
    colors: torch.Tensor
    opacities: torch.Tensor


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotation matrices from (N, 4) unit quaternions (w, x, y, z)."""
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(-1, 3, 3)


def project(
    means: torch.Tensor,
    log_scales: torch.Tensor,
    quats: torch.Tensor,
    opacity_logits: torch.Tensor,
    sh_dc: torch.Tensor,
    sh_rest: torch.Tensor,
    camera: Camera,
    sh_degree: int,
) -> Projected:
    """Project raw Gaussian parameters (see :mod:`trsplat.gaussians`) into ``camera``.

    The SH coefficients come as the two parameters the optimizers keep, ``sh_dc`` (N, 1, 3) and
    ``sh_rest`` (N, K − 1, 3), so no backend has to concatenate them for every render.
    """
    out_dtype = means.dtype
    work = torch.float64 if out_dtype in (torch.float32, torch.float16, torch.bfloat16) else out_dtype
    # the camera in float32 first, as the cpu kernels take it, then widened
    w2c = camera.world_to_camera.to(device=means.device, dtype=out_dtype).to(work)
    rot_v, trans_v = w2c[:3, :3], w2c[:3, 3]

    with torch.no_grad():
        z_all = means.detach().to(work) @ rot_v[2] + trans_v[2]
        ids = torch.nonzero(z_all > NEAR_PLANE).squeeze(1)
    means, log_scales, quats = means[ids].to(work), log_scales[ids].to(work), quats[ids].to(work)

    p_view = means @ rot_v.T + trans_v
    x, y, z = p_view.unbind(-1)
    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    w, h = camera.width, camera.height

    # Jacobian of the perspective map, with x/z and y/z clamped to [-0.15, 1.15] of the image.
    lim_x = ((-0.15 * w - cx) / fx, (1.15 * w - cx) / fx)
    lim_y = ((-0.15 * h - cy) / fy, (1.15 * h - cy) / fy)
    xz = torch.clamp(x / z, *lim_x)
    yz = torch.clamp(y / z, *lim_y)
    zeros = torch.zeros_like(z)
    jac = torch.stack([
        fx / z, zeros, -fx * xz / z,
        zeros, fy / z, -fy * yz / z,
    ], dim=-1).reshape(-1, 2, 3)
    # cov2d = T Σ Tᵀ = (T M)(T M)ᵀ with T = J W (2x3) and M = R S (Σ = M Mᵀ). Broadcasted
    # products instead of batched 3x3 matmuls: much faster on a CPU for 1e5-1e6 Gaussians.
    t = jac @ rot_v                                                     # (V, 2, 3)
    m = quat_to_rotmat(F.normalize(quats, dim=-1)) * torch.exp(log_scales)[:, None, :]
    tm = (t[:, :, :, None] * m[:, None, :, :]).sum(2)                   # (V, 2, 3)
    a = (tm[:, 0] * tm[:, 0]).sum(-1) + LOW_PASS
    b = (tm[:, 0] * tm[:, 1]).sum(-1)
    c = (tm[:, 1] * tm[:, 1]).sum(-1) + LOW_PASS
    det = a * c - b * b

    means2d = torch.stack([fx * x / z + cx - 0.5, fy * y / z + cy - 0.5], dim=-1)

    with torch.no_grad():
        mid = 0.5 * (a + c)
        lam = mid + torch.sqrt(torch.clamp(mid * mid - det, min=0.1))
        radii = torch.ceil(3.0 * torch.sqrt(lam)).to(torch.int64)
        keep = (det > 0) & torch.isfinite(means2d).all(-1) & tile_rect_nonempty(means2d, radii, w, h)
        sel = torch.nonzero(keep).squeeze(1)

    det = det[sel]
    conics = torch.stack([c[sel] / det, -b[sel] / det, a[sel] / det], dim=-1)
    ids = ids[sel]
    campos = camera.camera_center.to(device=means.device, dtype=out_dtype).to(work)
    dirs = F.normalize(means[sel] - campos, dim=-1)
    sh = torch.cat([sh_dc[ids], sh_rest[ids]], dim=1).to(work)
    colors = torch.clamp_min(eval_sh(sh_degree, sh, dirs) + 0.5, 0.0)
    return Projected(
        ids=ids,
        means2d=means2d[sel].to(out_dtype),
        conics=conics.to(out_dtype),
        depths=z[sel].to(out_dtype),
        radii=radii[sel],
        colors=colors.to(out_dtype),
        opacities=torch.sigmoid(opacity_logits[ids].to(work)).to(out_dtype),
    )


TILE_SIZE = 16


def tile_rect(
    means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Tile rectangle [x0, x1) × [y0, y1) of each splat, as INRIA's ``getRect`` (int truncation)."""
    grid_x = (width + TILE_SIZE - 1) // TILE_SIZE
    grid_y = (height + TILE_SIZE - 1) // TILE_SIZE
    m = means2d.detach().float()
    r = radii.float()
    x0 = torch.trunc((m[:, 0] - r) / TILE_SIZE).clamp(0, grid_x).long()
    y0 = torch.trunc((m[:, 1] - r) / TILE_SIZE).clamp(0, grid_y).long()
    x1 = torch.trunc((m[:, 0] + r + TILE_SIZE - 1) / TILE_SIZE).clamp(0, grid_x).long()
    y1 = torch.trunc((m[:, 1] + r + TILE_SIZE - 1) / TILE_SIZE).clamp(0, grid_y).long()
    return x0, x1, y0, y1


def tile_rect_nonempty(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> torch.Tensor:
    x0, x1, y0, y1 = tile_rect(torch.nan_to_num(means2d.detach(), nan=-1e9), radii, width, height)
    return (x1 > x0) & (y1 > y0)
