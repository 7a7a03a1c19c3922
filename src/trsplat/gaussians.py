"""Gaussians: raw (pre-activation) parameters, 3DGS activations, initialisation and PLY I/O.

All optimisers work in the raw space, exactly as 3DGS stores it:

=================  ===========  =======================================================
name               shape        meaning
=================  ===========  =======================================================
``means``          (N, 3)       world positions (raw = physical)
``log_scales``     (N, 3)       log of the per-axis standard deviations (scale = exp)
``quats``          (N, 4)       unnormalised rotation quaternion, order (w, x, y, z)
``opacity_logits`` (N,)         logit of the opacity (opacity = sigmoid)
``sh_dc``          (N, 1, 3)    SH degree-0 coefficient per colour channel
``sh_rest``        (N, 15, 3)   SH coefficients 1..15 (coefficient-major, as 3DGS)
=================  ===========  =======================================================
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from trsplat.errors import TrsplatError

SH_C0 = 0.28209479177387814
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
MAX_SH_DEGREE = 3
ALPHA_MIN = 1.0 / 255.0
"""Compositing skips every Gaussian-pixel pair with alpha below this (INRIA's rasterizer)."""


@dataclass
class Gaussians:
    """A set of 3D Gaussians in raw parameter space (see the module docstring for shapes)."""

    means: torch.Tensor
    log_scales: torch.Tensor
    quats: torch.Tensor
    opacity_logits: torch.Tensor
    sh_dc: torch.Tensor
    sh_rest: torch.Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expected = {
            "means": (n, 3), "log_scales": (n, 3), "quats": (n, 4), "opacity_logits": (n,),
            "sh_dc": (n, 1, 3), "sh_rest": (n, (MAX_SH_DEGREE + 1) ** 2 - 1, 3),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"Gaussians.{name} has shape {got}, expected {shape}")

    # -- containers -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    def params(self) -> dict[str, torch.Tensor]:
        """The raw tensors by name, in :data:`PARAM_NAMES` order."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_params(cls, params: dict[str, torch.Tensor]) -> "Gaussians":
        return cls(**{name: params[name] for name in PARAM_NAMES})

    def map(self, fn) -> "Gaussians":
        """A new container with ``fn`` applied to every raw tensor."""
        return Gaussians.from_params({k: fn(v) for k, v in self.params().items()})

    def detach(self) -> "Gaussians":
        return self.map(lambda t: t.detach())

    def clone(self) -> "Gaussians":
        return self.map(lambda t: t.detach().clone())

    def to(self, device: torch.device | str) -> "Gaussians":
        return self.map(lambda t: t.to(device))

    def requires_grad_(self, flag: bool = True) -> "Gaussians":
        for t in self.params().values():
            t.requires_grad_(flag)
        return self

    # -- activations (3DGS) -------------------------------------------------------------------
    @property
    def scales(self) -> torch.Tensor:
        """(N, 3) standard deviations along the Gaussian's axes."""
        return torch.exp(self.log_scales)

    @property
    def rotations(self) -> torch.Tensor:
        """(N, 4) unit quaternions (w, x, y, z), normalised as 3DGS does."""
        return F.normalize(self.quats, dim=-1)

    @property
    def opacities(self) -> torch.Tensor:
        """(N,) opacities in (0, 1)."""
        return torch.sigmoid(self.opacity_logits)

    def count_alive(self) -> int:
        """Gaussians with opacity ≥ 1/255, the compositing threshold. The others never reach it
        (alpha = opacity × falloff ≤ opacity), so they get no gradient and, without
        densification or an opacity reset, never come back."""
        return int((self.opacities.detach() >= ALPHA_MIN).sum())

    @property
    def sh(self) -> torch.Tensor:
        """(N, 16, 3) all SH coefficients, coefficient-major."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)


# -- initialisation -------------------------------------------------------------------------
def mean_knn_distance(points: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(N,) mean Euclidean distance from each point to its ``k`` nearest other points.

    3DGS initialises scales from ``sqrt(mean squared distance to 3 neighbours)`` (simple-knn);
    we use the same quantity computed with a KD-tree.
    """
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().double().numpy()
    n = pts.shape[0]
    if n < 2:
        return torch.full((n,), 0.01, dtype=torch.float32)
    kk = min(k, n - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1)
    mean_sq = (dist[:, 1:] ** 2).mean(axis=1)
    return torch.from_numpy(np.sqrt(np.maximum(mean_sq, 1e-7))).float()


def init_from_points(
    points: torch.Tensor, colors: torch.Tensor, initial_opacity: float = 0.1
) -> Gaussians:
    """Gaussians at ``points`` (P, 3) with RGB ``colors`` (P, 3) in [0, 1], as 3DGS initialises.

    Isotropic scales from the 3-nearest-neighbour distance, identity rotation, opacity 0.1,
    SH DC from the colour, higher bands zero.
    """
    if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
        raise TrsplatError(f"cannot initialise Gaussians from a point cloud of shape {tuple(points.shape)}")
    n = points.shape[0]
    dist = mean_knn_distance(points)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return Gaussians(
        means=points.float().clone(),
        log_scales=torch.log(dist)[:, None].repeat(1, 3),
        quats=quats,
        opacity_logits=torch.full((n,), math.log(initial_opacity / (1.0 - initial_opacity))),
        sh_dc=((colors.float() - 0.5) / SH_C0)[:, None, :].clone(),
        sh_rest=torch.zeros(n, (MAX_SH_DEGREE + 1) ** 2 - 1, 3),
    )


# -- PLY I/O (INRIA layout) -----------------------------------------------------------------
def _ply_attribute_names(n_rest: int) -> list[str]:
    return (
        ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
        + [f"f_rest_{i}" for i in range(n_rest)]
        + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    )


def save_ply(gaussians: Gaussians, path: str | os.PathLike) -> None:
    """Write ``gaussians`` as a binary little-endian PLY in exactly INRIA's attribute layout.

    Values are raw (log-scales, logit-opacity, unnormalised quaternions); ``f_rest`` is
    channel-major as 3DGS writes it. The file is written to a temporary name and renamed, so a
    crash never leaves a truncated PLY.
    """
    from plyfile import PlyData, PlyElement

    g = gaussians.detach().to("cpu")
    n = len(g)
    rest = g.sh_rest.transpose(1, 2).reshape(n, -1)  # (N, 3*15) channel-major
    columns = [
        g.means, torch.zeros(n, 3), g.sh_dc.reshape(n, 3), rest,
        g.opacity_logits[:, None], g.log_scales, g.quats,
    ]
    data = torch.cat(columns, dim=1).float().numpy()
    names = _ply_attribute_names(rest.shape[1])
    records = np.empty(n, dtype=[(name, "f4") for name in names])
    for i, name in enumerate(names):
        records[name] = data[:, i]
    from trsplat.io_utils import atomic_write

    with atomic_write(path) as tmp:
        PlyData([PlyElement.describe(records, "vertex")], byte_order="<").write(str(tmp))


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (INRIA layout, any SH degree <= 3; missing bands are zero)."""
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise TrsplatError(f"{path}: no such PLY file")
    try:
        vertex = PlyData.read(str(path))["vertex"]
    except Exception as exc:  # plyfile raises several types for malformed files
        raise TrsplatError(f"{path}: not a readable PLY file ({exc})") from None
    names = set(vertex.data.dtype.names or ())
    required = {"x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity"} | {
        f"scale_{i}" for i in range(3)} | {f"rot_{i}" for i in range(4)}
    missing = sorted(required - names)
    if missing:
        raise TrsplatError(f"{path}: not a 3DGS PLY, missing attributes {', '.join(missing)}")

    def col(*keys: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.asarray(vertex[k], dtype=np.float32) for k in keys], 1))

    n = len(vertex.data)
    rest_names = sorted((k for k in names if k.startswith("f_rest_")), key=lambda k: int(k[7:]))
    n_coeffs = len(rest_names) // 3
    if len(rest_names) % 3 or n_coeffs not in (0, 3, 8, 15):
        raise TrsplatError(f"{path}: {len(rest_names)} f_rest attributes is not a valid SH degree")
    sh_rest = torch.zeros(n, 15, 3)
    if n_coeffs:
        sh_rest[:, :n_coeffs] = col(*rest_names).reshape(n, 3, n_coeffs).transpose(1, 2)
    return Gaussians(
        means=col("x", "y", "z"),
        log_scales=col("scale_0", "scale_1", "scale_2"),
        quats=col("rot_0", "rot_1", "rot_2", "rot_3"),
        opacity_logits=col("opacity")[:, 0],
        sh_dc=col("f_dc_0", "f_dc_1", "f_dc_2")[:, None, :],
        sh_rest=sh_rest,
    )
