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


# -- comparisons with the reference (float32) -----------------------------------------------------
IMG_ATOL = 1e-5
IMG_RTOL = 1e-5
GRAD_RTOL = 1e-4


class Tol:
    """How many values may miss the strict tolerance, as long as they stay within ``loose``
    (relative to max(1, max |ref|)): a GPU's expf / FMA / float32 transmittance can flip a
    skip or stop decision that sits within an ulp of its threshold."""

    def __init__(self, outliers: int = 0, outlier_frac: float = 0.0, loose: float = 2e-2):
        self.outliers, self.outlier_frac, self.loose = outliers, outlier_frac, loose

    def allowed(self, n: int) -> int:
        return max(self.outliers, int(self.outlier_frac * n))


STRICT = Tol()
GPU_TOL = Tol(outliers=3, outlier_frac=1e-4)


def _check(bad: torch.Tensor, err: torch.Tensor, expected: torch.Tensor, what: str, tol: Tol,
           tight: str) -> None:
    n_bad = int(bad.sum())
    scale = max(1.0, float(expected.abs().max())) if expected.numel() else 1.0
    max_err = float(err.max()) if err.numel() else 0.0
    assert n_bad <= tol.allowed(bad.numel()), (
        f"{what}: {n_bad} of {bad.numel()} values miss {tight}, max |err| {max_err:.3g}")
    assert max_err <= tol.loose * scale or n_bad == 0, (
        f"{what}: max |err| {max_err:.3g} > loose bound {tol.loose * scale:.3g}")


def assert_image_close(actual, expected, what: str, tol: Tol = STRICT) -> None:
    """Per value |actual − expected| ≤ 1e-5 + 1e-5·|expected| (NaN fails)."""
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = (actual - expected).abs()
    bad = ~(err <= IMG_ATOL + IMG_RTOL * expected.abs())
    _check(bad, err, expected, what, tol, f"{IMG_ATOL:g} + {IMG_RTOL:g}·|ref|")


def assert_rel_close(actual, expected, what: str, tol: Tol = STRICT, rtol: float = GRAD_RTOL) -> None:
    """Per value |actual − expected| ≤ rtol · max|expected| + 1e-7 (gradients, tangents)."""
    assert actual is not None, f"{what}: missing"
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    err = (actual - expected).abs()
    bad = ~(err <= rtol * scale + 1e-7)
    _check(bad, err, expected, what, tol, f"{rtol:g}·max|ref| (= {rtol * scale:.3g})")


# -- seeded backend test scenes --------------------------------------------------------------------
def scene_camera(width: int, height: int, off_centre: bool = False) -> Camera:
    """A camera 4 units in front of the origin, y down, focal 0.8·width."""
    w2c = look_at(torch.tensor([0.0, 0.0, -4.0]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    f = 0.8 * width
    cx = width / 2.0 + (1.7 if off_centre else 0.0)
    cy = height / 2.0 - (1.2 if off_centre else 0.0)
    return Camera(width, height, f, f, cx, cy, w2c)


def make_scene(kind: str, seed: int, n: int, width: int, height: int) -> tuple[Gaussians, Camera]:
    """(Gaussians, Camera) of one kind; odd seeds move the principal point off centre.

    ``ball``: splats a few px wide, random opacities, a fifth nearly opaque (early stop);
    ``stacked``: every splat on a few pixels of one tile (long lists, T < 1e-4, empty tiles);
    ``wide``: large needle-like splats over many tiles (elongated on screen); ``behind``: depths from behind the
    camera to far away, many splats off screen; ``faint``: half the opacities within 2% of the
    1/255 skip threshold, half 0.999.
    """
    gen = torch.Generator().manual_seed(seed)
    cam = scene_camera(width, height, off_centre=(seed % 2 == 1))
    f = cam.fx
    if kind == "ball":
        means = 0.8 * torch.randn(n, 3, generator=gen)
        base = math.log(2.5 * 4.0 / f)
        log_scale = base + 0.5 * torch.randn(n, 1, generator=gen) + 0.4 * torch.randn(n, 3, generator=gen)
        logits = 2.0 * torch.randn(n, generator=gen)
        logits[: max(1, n // 5)] = 5.0
    elif kind == "stacked":
        z = 1.5 * torch.rand(n, generator=gen) - 0.5
        depth = z + 4.0
        px, py = 0.7 * width, 0.4 * height
        means = torch.stack([
            (px - (cam.cx - 0.5)) * depth / f + 0.5 / f * depth * torch.randn(n, generator=gen),
            (py - (cam.cy - 0.5)) * depth / f + 0.5 / f * depth * torch.randn(n, generator=gen),
            z,
        ], dim=1)
        log_scale = torch.log(1.0 * depth / f)[:, None] + 0.2 * torch.randn(n, 3, generator=gen)
        logits = 1.0 + 2.0 * torch.randn(n, generator=gen)
    elif kind == "wide":
        means = 0.6 * torch.randn(n, 3, generator=gen)
        log_scale = math.log(8.0 * 4.0 / f) + 0.8 * torch.randn(n, 3, generator=gen)
        log_scale[:, 1:] -= 2.0  # needles: one long axis
        logits = 1.0 * torch.randn(n, generator=gen) - 0.5
    elif kind == "behind":
        means = torch.stack([
            6.0 * torch.randn(n, generator=gen),
            4.0 * torch.randn(n, generator=gen),
            -8.0 + 14.0 * torch.rand(n, generator=gen),
        ], dim=1)
        log_scale = math.log(0.05) + 0.7 * torch.randn(n, 3, generator=gen)
        logits = 2.0 * torch.randn(n, generator=gen)
    elif kind == "faint":
        means = 0.7 * torch.randn(n, 3, generator=gen)
        log_scale = math.log(3.0 * 4.0 / f) + 0.3 * torch.randn(n, 3, generator=gen)
        o = torch.where(torch.rand(n, generator=gen) < 0.5,
                        (1.0 / 255.0) * (1.0 + 0.02 * torch.randn(n, generator=gen)),
                        torch.full((n,), 0.999))
        logits = torch.log(o / (1.0 - o))
    else:
        raise ValueError(kind)
    g = Gaussians(
        means=means.float(), log_scales=log_scale.float(),
        quats=torch.randn(n, 4, generator=gen), opacity_logits=logits.float(),
        sh_dc=0.6 * torch.randn(n, 1, 3, generator=gen),
        sh_rest=0.1 * torch.randn(n, 15, 3, generator=gen),
    )
    return g, cam


def scene_id(scene: tuple) -> str:
    kind, seed, n, w, h = scene
    return f"{kind}-s{seed}-n{n}-{w}x{h}"


# Tiny scenes (2x1 tiles): every backend, the CUDA simulator included.
TINY_SCENES = [("ball", 0, 10, 24, 12), ("wide", 3, 6, 24, 12), ("stacked", 5, 30, 24, 12),
               ("behind", 6, 40, 24, 12), ("faint", 8, 16, 24, 12)]
# Larger scenes for backends that run natively (not simulated).
SCENES = [
    ("ball", 10, 1, 37, 23),
    ("ball", 1, 7, 37, 23),
    ("ball", 2, 300, 129, 65),
    ("ball", 3, 2000, 129, 65),
    ("ball", 4, 4000, 200, 120),
    ("ball", 5, 1500, 64, 48),
    ("behind", 6, 3000, 129, 65),
    ("stacked", 7, 3000, 48, 32),
    ("faint", 8, 1500, 96, 80),
    ("wide", 9, 60, 129, 65),
]


def random_splats(seed: int, v: int, width: int, height: int, n_ch: int, *, max_var: float = 100.0,
                  min_var: float = 0.3, opacity: tuple[float, float] = (0.0005, 0.9995),
                  spread: float = 8.0):
    """Random screen-space splats: means around the image, SPD conics with variances from
    ``min_var`` to ``max_var`` px² (elongated: the minor one ≤ max_var / 10), radii, depths (with
    exact ties), features (V, n_ch) and a background, all float32 on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    means2d = torch.stack([
        torch.rand(v, generator=gen) * (width + 2 * spread) - spread,
        torch.rand(v, generator=gen) * (height + 2 * spread) - spread,
    ], dim=1)
    ang = torch.rand(v, generator=gen) * math.pi
    l1 = min_var + torch.rand(v, generator=gen) ** 2 * max_var
    l2 = min_var + torch.rand(v, generator=gen) ** 2 * max_var / 10
    c, s = torch.cos(ang), torch.sin(ang)
    cov_a, cov_b, cov_c = c * c * l1 + s * s * l2, c * s * (l1 - l2), s * s * l1 + c * c * l2
    det = cov_a * cov_c - cov_b * cov_b
    conics = torch.stack([cov_c / det, -cov_b / det, cov_a / det], dim=1)
    radii = torch.ceil(3.0 * torch.sqrt(torch.maximum(l1, l2))).long()
    lo, hi = opacity
    opacities = lo + torch.rand(v, generator=gen) * (hi - lo)
    features = torch.randn(v, n_ch, generator=gen)
    depths = 0.3 + 10 * torch.rand(v, generator=gen)
    depths[: v // 10] = depths[v // 10: 2 * (v // 10)]  # depth ties
    background = torch.randn(n_ch, generator=gen)
    return means2d, conics, features, opacities, radii, depths, background


def cotangents(cam: Camera, seed: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random cotangents of a render's (image, alpha, depth)."""
    gen = torch.Generator().manual_seed(1000 + seed)
    return tuple(t.to(device) for t in (torch.randn(cam.height, cam.width, 3, generator=gen),
                                        torch.randn(cam.height, cam.width, generator=gen),
                                        0.1 * torch.randn(cam.height, cam.width, generator=gen)))


def tangents(g: Gaussians, seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """Random tangents of every raw parameter of ``g``."""
    gen = torch.Generator().manual_seed(2000 + seed)
    return {k: torch.randn(v.shape, generator=gen).to(device) for k, v in g.params().items()}


BG = (0.2, 0.5, 0.7)


def render_grads(g: Gaussians, cam: Camera, backend: str, seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """Gradients of every raw parameter for random cotangents of image, alpha and depth."""
    from trsplat.render import render

    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend=backend, background=BG)
    ci, ca, cd = cotangents(cam, seed, device)
    ((out.image * ci).sum() + (out.alpha * ca).sum() + (out.depth * cd).sum()).backward()
    return {k: v.grad for k, v in gg.params().items()}
