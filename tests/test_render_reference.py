"""The pure-torch reference renderer against an independent brute-force evaluation and finite differences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.autograd import forward_ad

from trsplat.gaussians import Gaussians
from trsplat.render import render
from tests.helpers import front_camera, random_gaussians


def brute_force_render(g: Gaussians, cam, sh_degree: int, bg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel INRIA compositing written independently in float64 numpy, one pixel and one Gaussian at a time.

    Implements the INRIA conventions of docs/training.md ("Rendering": projection, tile-rectangle
    membership, alpha compositing) directly, without any code from trsplat.render.
    """
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    w2c = cam.world_to_camera.double().numpy()
    center = -w2c[:3, :3].T @ w2c[:3, 3]
    splats = []
    for i in range(len(g)):
        p = g.means[i].double().numpy()
        t = w2c[:3, :3] @ p + w2c[:3, 3]
        if t[2] <= 0.2:
            continue
        q = g.quats[i].double().numpy()
        w, x, y, z = q / np.linalg.norm(q)
        rot = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])
        s = np.exp(g.log_scales[i].double().numpy())
        sigma = rot @ np.diag(s ** 2) @ rot.T
        limx = 1.3 * cam.width / (2 * cam.fx)
        limy = 1.3 * cam.height / (2 * cam.fy)
        tx = np.clip(t[0] / t[2], -limx, limx) * t[2]
        ty = np.clip(t[1] / t[2], -limy, limy) * t[2]
        jac = np.array([[cam.fx / t[2], 0, -cam.fx * tx / t[2] ** 2], [0, cam.fy / t[2], -cam.fy * ty / t[2] ** 2]])
        cov = jac @ w2c[:3, :3] @ sigma @ w2c[:3, :3].T @ jac.T + 0.3 * np.eye(2)
        det = np.linalg.det(cov)
        conic = np.linalg.inv(cov)
        mid = 0.5 * (cov[0, 0] + cov[1, 1])
        radius = math.ceil(3 * math.sqrt(mid + math.sqrt(max(0.1, mid * mid - det))))
        mean2d = np.array([cam.fx * t[0] / t[2] + cam.cx - 0.5, cam.fy * t[1] / t[2] + cam.cy - 0.5])
        gx, gy = (cam.width + 15) // 16, (cam.height + 15) // 16
        x0 = min(gx, max(0, int((mean2d[0] - radius) / 16)))
        x1 = min(gx, max(0, int((mean2d[0] + radius + 15) / 16)))
        y0 = min(gy, max(0, int((mean2d[1] - radius) / 16)))
        y1 = min(gy, max(0, int((mean2d[1] + radius + 15) / 16)))
        if x1 <= x0 or y1 <= y0:
            continue
        d = (p - center) / np.linalg.norm(p - center)
        sh = g.sh[i].double().numpy()
        col = c0 * sh[0]
        if sh_degree >= 1:
            col = col - c1 * d[1] * sh[1] + c1 * d[2] * sh[2] - c1 * d[0] * sh[3]
        assert sh_degree <= 1, "the brute force only implements SH degree <= 1"
        col = np.maximum(col + 0.5, 0)
        opacity = 1 / (1 + math.exp(-float(g.opacity_logits[i])))
        splats.append((t[2], i, mean2d, conic, opacity, col, (x0, x1, y0, y1)))
    splats.sort(key=lambda s: (s[0], s[1]))
    img = np.zeros((cam.height, cam.width, 3))
    alpha = np.zeros((cam.height, cam.width))
    for py in range(cam.height):
        for px in range(cam.width):
            trans, acc = 1.0, np.zeros(3)
            for depth, _, m, con, op, col, (x0, x1, y0, y1) in splats:
                if not (x0 <= px // 16 < x1 and y0 <= py // 16 < y1):
                    continue
                dx, dy = m[0] - px, m[1] - py
                power = -0.5 * (con[0, 0] * dx * dx + con[1, 1] * dy * dy) - con[0, 1] * dx * dy
                if power > 0:
                    continue
                a = min(0.99, op * math.exp(power))
                if a < 1 / 255:
                    continue
                if trans * (1 - a) < 1e-4:
                    break
                acc += col * a * trans
                trans *= 1 - a
            img[py, px] = acc + trans * bg
            alpha[py, px] = 1 - trans
    return img, alpha


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_brute_force(seed: int) -> None:
    g = random_gaussians(40, seed)
    g.opacity_logits[:5] = 6.0  # some near-opaque splats so the early stop triggers
    cam = front_camera(37, 29, cx=17.0, cy=15.5)
    bg = np.array([0.2, 0.5, 1.0])
    out = render(g, cam, sh_degree=1, background=tuple(bg))
    img, alpha = brute_force_render(g, cam, 1, bg)
    np.testing.assert_allclose(out.image.numpy(), img, atol=2e-5)
    np.testing.assert_allclose(out.alpha.numpy(), alpha, atol=2e-5)


def test_early_stop_and_saturation() -> None:
    """Many opaque splats on one pixel: the transmittance stops at >= 1e-4 and the image is their colour."""
    n = 30
    g = Gaussians(
        means=torch.zeros(n, 3) + torch.linspace(0, 0.3, n)[:, None] * torch.tensor([0.0, 0.0, 1.0]),
        log_scales=torch.full((n, 3), math.log(0.5)),
        quats=torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1),
        opacity_logits=torch.full((n,), 8.0),
        sh_dc=torch.zeros(n, 1, 3),
        sh_rest=torch.zeros(n, 15, 3),
    )
    out = render(g, front_camera(16, 16), sh_degree=0, background=(1.0, 0.0, 0.0))
    centre_alpha = float(out.alpha[8, 8])
    assert 1 - 1e-4 * 100 < centre_alpha <= 1 - 1e-4  # 0.99 per splat: stops after 2 splats (T = 1e-4)
    torch.testing.assert_close(out.image[8, 8], torch.full((3,), 0.5) * centre_alpha + torch.tensor([1.0, 0, 0]) * (1 - centre_alpha))


def _double(g: Gaussians) -> Gaussians:
    return g.map(lambda t: t.double())


def _loss_fn(cam, names, base: Gaussians, weights: torch.Tensor):
    def f(*tensors):
        params = base.params()
        params.update(dict(zip(names, tensors)))
        out = render(Gaussians.from_params(params), cam, sh_degree=3)
        return (out.image * weights).sum() + 0.3 * out.depth.sum() + 0.7 * out.alpha.sum()
    return f


@pytest.mark.parametrize("seed", [0, 1])
def test_gradients_match_finite_differences(seed: int) -> None:
    """Directional derivatives of every raw parameter tensor: autograd vs central differences (float64)."""
    g = _double(random_gaussians(12, seed))
    cam = front_camera(24, 20)
    weights = torch.rand(cam.height, cam.width, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    names = list(g.params())
    f = _loss_fn(cam, names, g, weights)
    tensors = [t.clone().requires_grad_(True) for t in g.params().values()]
    grads = torch.autograd.grad(f(*tensors), tensors)
    gen = torch.Generator().manual_seed(100 + seed)
    for name, t, grad in zip(names, tensors, grads):
        direction = torch.randn(t.shape, generator=gen, dtype=torch.float64)
        h = 1e-6
        plus = [x.detach() + (h * direction if x is t else 0) for x in tensors]
        minus = [x.detach() - (h * direction if x is t else 0) for x in tensors]
        fd = (f(*plus) - f(*minus)) / (2 * h)
        analytic = (grad * direction).sum()
        assert torch.isclose(analytic, fd, rtol=1e-4, atol=1e-6), f"{name}: {analytic} vs {fd}"


def test_jvp_matches_finite_differences_and_vjp() -> None:
    """Forward mode (torch.func.jvp and forward_ad) equals central differences and <grad, v>."""
    g = _double(random_gaussians(10, 3))
    cam = front_camera(20, 18)
    names = list(g.params())
    tensors = tuple(t.clone() for t in g.params().values())
    gen = torch.Generator().manual_seed(7)
    tangents = tuple(torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in tensors)

    def image_fn(*ts):
        return render(Gaussians.from_params(dict(zip(names, ts))), cam, sh_degree=3).image

    _, jvp_func = torch.func.jvp(image_fn, tensors, tangents)
    with forward_ad.dual_level():
        duals = [forward_ad.make_dual(t, v) for t, v in zip(tensors, tangents)]
        jvp_ad = forward_ad.unpack_dual(image_fn(*duals)).tangent
    h = 1e-6
    fd = (image_fn(*(t + h * v for t, v in zip(tensors, tangents)))
          - image_fn(*(t - h * v for t, v in zip(tensors, tangents)))) / (2 * h)
    torch.testing.assert_close(jvp_func, fd, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(jvp_ad, jvp_func)
    # <J v, u> == <v, J^T u>
    u = torch.randn(jvp_func.shape, generator=gen, dtype=torch.float64)
    req = [t.clone().requires_grad_(True) for t in tensors]
    vjp = torch.autograd.grad((image_fn(*req) * u).sum(), req)
    assert torch.isclose((jvp_func * u).sum(), sum((a * b).sum() for a, b in zip(vjp, tangents)), rtol=1e-10)


def test_dense_jacobian_tiny_scene() -> None:
    g = _double(random_gaussians(3, 5))
    cam = front_camera(8, 8, focal=12.0)

    def fn(means: torch.Tensor) -> torch.Tensor:
        params = g.params()
        params["means"] = means
        return render(Gaussians.from_params(params), cam, sh_degree=0).image

    jac = torch.autograd.functional.jacobian(fn, g.means)
    jac_fwd = torch.func.jacfwd(fn)(g.means)
    assert jac.shape == (8, 8, 3, 3, 3)
    torch.testing.assert_close(jac, jac_fwd)
    assert jac.abs().sum() > 0


def test_degenerate_and_invisible_gaussians_are_handled() -> None:
    """Behind the camera, off screen, zero/tiny/huge scales, zero quaternion: finite images and gradients."""
    g = random_gaussians(8, 11)
    p = g.params()
    p["means"][0] = torch.tensor([0.0, 0.0, -3.1])   # behind the near plane (camera at z = -3)
    p["means"][1] = torch.tensor([0.0, 0.0, -5.0])   # behind the camera
    p["means"][2] = torch.tensor([50.0, 0.0, 0.0])   # far off screen
    p["log_scales"][3] = -30.0                        # tiny
    p["log_scales"][4] = torch.tensor([3.0, -30.0, -30.0])  # needle, huge along one axis
    p["quats"][5] = 0.0                               # degenerate rotation
    p["opacity_logits"][6] = -30.0                    # transparent
    g = Gaussians.from_params(p).requires_grad_()
    out = render(g, front_camera(32, 24))
    assert torch.isfinite(out.image).all() and torch.isfinite(out.depth).all()
    (out.image.sum() + out.depth.sum()).backward()
    for name, t in g.params().items():
        assert torch.isfinite(t.grad).all(), name
    assert not out.visible[0] and not out.visible[1] and not out.visible[2]
    assert g.means.grad[:3].abs().sum() == 0


def test_empty_scene_renders_background() -> None:
    g = random_gaussians(4, 0)
    g.means[:] = torch.tensor([0.0, 0.0, -10.0])
    out = render(g, front_camera(17, 9), background=(0.1, 0.2, 0.3))
    torch.testing.assert_close(out.image, torch.tensor([0.1, 0.2, 0.3]).expand(9, 17, 3))
    assert out.alpha.abs().sum() == 0


def test_compositor_gradients_match_finite_differences() -> None:
    """The reference compositor alone, float64, elongated and near-threshold (faint) splats,
    empty tiles: directional derivatives of every input, the background included."""
    from trsplat.render.composite_reference import composite_reference
    from trsplat.render.tiles import bin_splats
    from tests.helpers import random_splats

    w, h = 24, 12
    m, con, f, o, radii, depths, bg = random_splats(3, 12, w, h, 3, max_var=60.0, spread=0.0)
    o[:4] = torch.tensor([1.02, 1.05, 1.1, 1.2]) / 255.0  # just above the 1/255 skip threshold
    bins = bin_splats(m, radii, depths, w, h)
    inputs = [t.double() for t in (m, con, f, o, bg)]
    gen = torch.Generator().manual_seed(4)
    weights = torch.rand(h, w, 3, generator=gen, dtype=torch.float64)

    def loss(*xs):
        img, alpha = composite_reference(*xs[:4], bins, w, h, xs[4])
        return (img * weights).sum() + 0.7 * alpha.sum()

    req = [t.clone().requires_grad_(True) for t in inputs]
    grads = torch.autograd.grad(loss(*req), req)
    for name, i in zip(("means2d", "conics", "features", "opacities", "background"), range(5)):
        d = torch.randn(inputs[i].shape, generator=gen, dtype=torch.float64) * (1e-3 if i == 3 else 1.0)
        eps = 1e-6
        plus = [x + eps * d if j == i else x for j, x in enumerate(inputs)]
        minus = [x - eps * d if j == i else x for j, x in enumerate(inputs)]
        fd = (loss(*plus) - loss(*minus)) / (2 * eps)
        assert torch.isclose((grads[i] * d).sum(), fd, rtol=1e-5, atol=1e-8), name
