"""Gaussians -> the arrays the browser draws, and trsplat cameras <-> viser camera poses.

viser's splats carry a centre (float32), the covariance's upper triangle (float16) and an 8-bit
RGBA colour per Gaussian. The colour is the SH degree-0 term (``0.5 + C0 * sh_dc``, clamped),
so the browser shows no view-dependent colour. float16 covariances lose small Gaussians
(variances below ~6e-5 are subnormal, below ~6e-8 zero): :func:`splat_arrays` therefore divides
positions by ``unit`` (the median Gaussian scale) and covariances by ``unit**2``, and the scene node
is scaled back by ``unit`` in the browser.

Both trsplat and viser cameras use OpenCV axes (x right, y down, z forward); a viser pose is the
camera-to-world rotation (w, x, y, z) and the camera centre.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trsplat.camera import Camera
from trsplat.gaussians import ALPHA_MIN, SH_C0, Gaussians
from trsplat.render.project import quat_to_rotmat


@dataclass
class SplatArrays:
    """What ``viser``'s ``add_gaussian_splats`` takes, in units of ``unit`` world units."""

    centers: np.ndarray  # (M, 3) float32
    covariances: np.ndarray  # (M, 3, 3) float32
    rgbs: np.ndarray  # (M, 3) float32 in [0, 1]
    opacities: np.ndarray  # (M, 1) float32 in [0, 1]
    unit: float
    total: int  # Gaussians before the selection

    def __len__(self) -> int:
        return self.centers.shape[0]


@torch.no_grad()
def splat_arrays(gaussians: Gaussians, max_splats: int | None = None) -> SplatArrays:
    """The visible Gaussians (opacity >= 1/255, the compositing threshold) as browser splats; with
    ``max_splats``, only that many, those with the largest opacity x footprint (opacity times
    the geometric-mean variance), which keeps the browser interactive on a weak machine."""
    g = gaussians.detach().to("cpu")
    opacities = g.opacities
    idx = torch.nonzero(opacities >= ALPHA_MIN)[:, 0]
    if max_splats is not None and len(idx) > max_splats:
        score = opacities[idx] * torch.exp(g.log_scales[idx].sum(-1) * (2.0 / 3.0))
        idx = idx[torch.topk(score, max_splats).indices]
    log_scales = g.log_scales[idx]
    finite = torch.isfinite(log_scales)
    unit = float(torch.exp(log_scales[finite].median())) if bool(finite.any()) else 1.0
    unit = unit if math.isfinite(unit) and unit > 0 else 1.0
    rot = quat_to_rotmat(F.normalize(g.quats[idx], dim=-1))
    variances = torch.exp(2.0 * (log_scales - math.log(unit)))
    cov = (rot * variances[:, None, :]) @ rot.transpose(1, 2)
    rgbs = (0.5 + SH_C0 * g.sh_dc[idx, 0]).clamp(0.0, 1.0)
    return SplatArrays(centers=(g.means[idx] / unit).float().numpy(), covariances=cov.float().numpy(),
                       rgbs=rgbs.float().numpy(), opacities=opacities[idx, None].float().numpy(), unit=unit,
                       total=len(g))


def rotation_to_wxyz(rot: np.ndarray) -> np.ndarray:
    """(4,) unit quaternion (w, x, y, z) of a (3, 3) rotation matrix."""
    m = np.asarray(rot, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def wxyz_to_rotation(wxyz) -> np.ndarray:
    """(3, 3) rotation matrix of a quaternion (w, x, y, z)."""
    q = torch.as_tensor(np.asarray(wxyz, dtype=np.float64))[None]
    return quat_to_rotmat(F.normalize(q, dim=-1))[0].numpy()


def camera_pose(camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """(wxyz, position) of ``camera`` in viser's convention (camera-to-world, OpenCV axes)."""
    w2c = camera.world_to_camera.double().cpu().numpy()
    rot = w2c[:3, :3].T
    return rotation_to_wxyz(rot), -rot @ w2c[:3, 3]


def camera_from_pose(wxyz, position, fov_y: float, width: int, height: int, name: str = "") -> Camera:
    """A centred pinhole camera at a viser pose, ``fov_y`` (radians) over ``height`` pixels."""
    rot = wxyz_to_rotation(wxyz)
    w2c = np.eye(4)
    w2c[:3, :3] = rot.T
    w2c[:3, 3] = -rot.T @ np.asarray(position, dtype=np.float64)
    focal = 0.5 * height / math.tan(0.5 * fov_y)
    return Camera(width, height, focal, focal, width / 2, height / 2, torch.from_numpy(w2c).float(), name)


def scaled_size(width: int, height: int, longest: int) -> tuple[int, int]:
    """``width x height`` shrunk (never enlarged) so that its longest side is at most ``longest``."""
    factor = min(1.0, longest / max(width, height, 1))
    return max(1, round(width * factor)), max(1, round(height * factor))
