"""Small synthetic scenes shared by the tests."""

from __future__ import annotations

import math

import torch

from trsplat.camera import Camera, look_at
from trsplat.gaussians import Gaussians


def random_gaussians(n: int, seed: int, *, spread: float = 0.6, scale: tuple[float, float] = (0.03, 0.15),
                     dtype: torch.dtype = torch.float32) -> Gaussians:
    """``n`` random anisotropic Gaussians in a ball of radius ``spread`` around the origin."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(scale[0]), math.log(scale[1])
    g = Gaussians(
        means=(torch.rand(n, 3, generator=gen) * 2 - 1) * spread,
        log_scales=torch.rand(n, 3, generator=gen) * (hi - lo) + lo,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=torch.randn(n, generator=gen) * 1.5,
        sh_dc=torch.randn(n, 1, 3, generator=gen) * 0.8,
        sh_rest=torch.randn(n, 15, 3, generator=gen) * 0.1,
    )
    return g.map(lambda t: t.to(dtype))


def front_camera(width: int = 40, height: int = 30, distance: float = 3.0, focal: float | None = None,
                 cx: float | None = None, cy: float | None = None) -> Camera:
    """A camera on the -z axis looking at the origin, y up in the world."""
    f = focal if focal is not None else 1.2 * width
    w2c = look_at(torch.tensor([0.0, 0.0, -distance]), torch.zeros(3), torch.tensor([0.0, 1.0, 0.0]))
    return Camera(width, height, f, f, width / 2 if cx is None else cx, height / 2 if cy is None else cy, w2c)
