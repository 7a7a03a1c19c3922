"""The native ``cpu`` compositing backend against the pure-torch ``reference`` oracle.

Full ``render()`` comparisons (image, alpha, depth; every raw-parameter gradient for a random
cotangent; every forward-mode tangent; the JVP-then-backward pattern of the trust-region
optimizer; torch.func transforms) on random scenes, plus compositor-level comparisons with
random splats, the tile binning, and the conservative pixel-box culling of the kernels.

Tolerances (float32 everywhere):

* image / depth / alpha: |cpu − ref| ≤ 1e-5 + 1e-5·|ref| per pixel;
* gradients and tangents: max |cpu − ref| ≤ 1e-4 · max |ref| (+ 1e-7) per tensor.

The kernels reproduce the reference's float32 decisions (skip α < 1/255, power > 0, the 0.99
clamp, the T < 1e-4 stop, double-accumulated transmittance), but ``exp`` can differ by one ulp
between numba's libm and torch's vectorised exp (~1% of arguments), so a decision that sits
within one ulp of its threshold could in principle flip. The scenes below are fixed (seeded)
and were checked to be free of such near-ties; a flip would show up as an isolated pixel
outside the tolerance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from trsplat.camera import Camera, look_at
from trsplat.gaussians import PARAM_NAMES, Gaussians
from trsplat.render import render
from trsplat.render import cpu_kernels as K
from trsplat.render.composite_cpu import _boxes, _pack, composite_cpu
from trsplat.render.composite_reference import composite_reference
from trsplat.render.project import tile_rect
from trsplat.render.tiles import _bin_splats_torch, bin_splats

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

IMG_ATOL = 1e-5
IMG_RTOL = 1e-5
GRAD_RTOL = 1e-4


# -- scenes -----------------------------------------------------------------------------------
def _camera(width: int, height: int, fov_scale: float = 0.8, off_centre: bool = False) -> Camera:
    w2c = look_at(torch.tensor([0.0, 0.0, -4.0]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    f = fov_scale * width
    cx = width / 2.0 + (3.7 if off_centre else 0.0)
    cy = height / 2.0 - (2.2 if off_centre else 0.0)
    return Camera(width, height, f, f, cx, cy, w2c)


def _appearance(n: int, gen: torch.Generator, log_scale: torch.Tensor, logits: torch.Tensor,
                means: torch.Tensor) -> Gaussians:
    return Gaussians(
        means=means,
        log_scales=log_scale,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=logits,
        sh_dc=0.6 * torch.randn(n, 1, 3, generator=gen),
        sh_rest=0.1 * torch.randn(n, 15, 3, generator=gen),
    )


def make_scene(kind: str, seed: int, n: int, width: int, height: int):
    """(Gaussians, Camera) of one of the test scene kinds."""
    gen = torch.Generator().manual_seed(seed)
    cam = _camera(width, height, off_centre=(seed % 2 == 1))
    f = cam.fx
    if kind == "ball":
        # trained-looking: a ball of splats a few pixels wide, random opacities
        means = 0.8 * torch.randn(n, 3, generator=gen)
        base = math.log(2.0 * 4.0 / f)  # ~2 px standard deviation at the centre
        log_scale = base + 0.5 * torch.randn(n, 1, generator=gen) + 0.4 * torch.randn(n, 3, generator=gen)
        logits = 2.0 * torch.randn(n, generator=gen)
    elif kind == "behind":
        # depths spread from behind the camera to far away, many splats off screen
        means = torch.stack([
            6.0 * torch.randn(n, generator=gen),
            4.0 * torch.randn(n, generator=gen),
            -8.0 + 14.0 * torch.rand(n, generator=gen),
        ], dim=1)
        log_scale = math.log(0.05) + 0.7 * torch.randn(n, 3, generator=gen)
        logits = 2.0 * torch.randn(n, generator=gen)
    elif kind == "stacked":
        # every splat inside one tile: a tile list far longer than any fixed cap would allow
        px, py = 24.0, 8.0  # pixel in tile (1, 0)
        z = 1.5 * torch.rand(n, generator=gen) - 0.5
        depth = z + 4.0
        means = torch.stack([
            (px - (cam.cx - 0.5)) * depth / f + 0.4 / f * depth * torch.randn(n, generator=gen),
            (py - (cam.cy - 0.5)) * depth / f + 0.4 / f * depth * torch.randn(n, generator=gen),
            z,
        ], dim=1)
        log_scale = torch.log(0.7 * depth / f)[:, None] + 0.2 * torch.randn(n, 3, generator=gen)
        logits = 1.0 + 2.0 * torch.randn(n, generator=gen)
    elif kind == "extreme_opacity":
        # opacities at the 1/255 skip threshold and nearly opaque splats
        means = 0.7 * torch.randn(n, 3, generator=gen)
        log_scale = math.log(3.0 * 4.0 / f) + 0.3 * torch.randn(n, 3, generator=gen)
        o = torch.where(torch.rand(n, generator=gen) < 0.5,
                        (1.0 / 255.0) * (1.0 + 0.02 * torch.randn(n, generator=gen)),
                        torch.full((n,), 0.999))
        logits = torch.log(o / (1.0 - o))
    elif kind == "wide":
        # large and very anisotropic splats spanning many tiles
        means = 0.6 * torch.randn(n, 3, generator=gen)
        log_scale = math.log(12.0 * 4.0 / f) + 1.0 * torch.randn(n, 3, generator=gen)
        logits = 1.0 * torch.randn(n, generator=gen) - 1.0
    else:
        raise ValueError(kind)
    return _appearance(n, gen, log_scale.float(), logits.float(), means.float()), cam


SCENES = [
    ("ball", 0, 1, 37, 23),
    ("ball", 1, 7, 37, 23),
    ("ball", 2, 300, 129, 65),
    ("ball", 3, 2000, 129, 65),
    ("ball", 4, 4000, 200, 120),
    ("ball", 5, 1500, 64, 48),
    ("behind", 6, 3000, 129, 65),
    ("stacked", 7, 3000, 48, 32),
    ("extreme_opacity", 8, 1500, 96, 80),
    ("wide", 9, 60, 129, 65),
]
SCENE_IDS = [f"{k}-s{s}-n{n}-{w}x{h}" for k, s, n, w, h in SCENES]
# the gradient / tangent tests use a subset, to keep the file fast
GRAD_SCENES = [SCENES[i] for i in (0, 2, 3, 6, 7, 8, 9)]
GRAD_IDS = [SCENE_IDS[i] for i in (0, 2, 3, 6, 7, 8, 9)]


def assert_image_close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    err = (actual - expected).abs()
    tol = IMG_ATOL + IMG_RTOL * expected.abs()
    bad = err > tol
    assert not bool(bad.any()), (
        f"{what}: {int(bad.sum())} of {bad.numel()} values differ, max |err| {float(err.max()):.3g}")


def assert_rel_close(actual: torch.Tensor, expected: torch.Tensor, what: str, rtol: float = GRAD_RTOL) -> None:
    assert actual.shape == expected.shape, what
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    err = float((actual - expected).abs().max()) if expected.numel() else 0.0
    assert err <= rtol * scale + 1e-7, f"{what}: max |err| {err:.3g} vs max |ref| {scale:.3g}"


def _cotangents(cam: Camera, seed: int):
    gen = torch.Generator().manual_seed(1000 + seed)
    return (torch.randn(cam.height, cam.width, 3, generator=gen),
            torch.randn(cam.height, cam.width, generator=gen),
            0.1 * torch.randn(cam.height, cam.width, generator=gen))


def _tangents(g: Gaussians, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + seed)
    return {k: torch.randn(v.shape, generator=gen) for k, v in g.params().items()}


# -- render(): forward ------------------------------------------------------------------------
@pytest.mark.parametrize("scene", SCENES, ids=SCENE_IDS)
def test_render_forward_matches_reference(scene):
    g, cam = make_scene(*scene)
    bg = (0.3, 0.6, 0.9)
    out_cpu = render(g, cam, backend="cpu", background=bg)
    out_ref = render(g, cam, backend="reference", background=bg)
    assert out_cpu.image.dtype == torch.float32 and out_cpu.image.shape == (cam.height, cam.width, 3)
    assert_image_close(out_cpu.image, out_ref.image, "image")
    assert_image_close(out_cpu.alpha, out_ref.alpha, "alpha")
    assert_image_close(out_cpu.depth, out_ref.depth, "depth")
    assert torch.equal(out_cpu.visible, out_ref.visible)
    assert torch.equal(out_cpu.radii, out_ref.radii)


def test_scenes_exercise_the_edge_cases():
    """The scene list really contains what the tests claim: long tiles, culled splats, ..."""
    g, cam = make_scene(*SCENES[7])  # stacked
    out = render(g, cam, backend="cpu")
    from trsplat.render.project import project

    with torch.no_grad():
        p = project(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh, cam, 3)
        bins = bin_splats(p.means2d, p.radii, p.depths, cam.width, cam.height)
    counts = bins.tile_offsets[1:] - bins.tile_offsets[:-1]
    assert int(counts.max()) >= 2900  # one tile holds nearly all 3000 splats
    assert float(out.alpha.max()) > 0.999  # pixels reach the T < 1e-4 stop
    g, cam = make_scene(*SCENES[6])  # behind
    out = render(g, cam, backend="cpu")
    z = g.means[:, 2] + 4.0
    assert bool((z <= 0.2).any()) and int(out.visible.sum()) < len(g)
    assert bool((~out.visible & (z > 0.2)).any())  # in front of the camera but off screen


# -- render(): reverse mode -----------------------------------------------------------------------
def _grads(g: Gaussians, cam: Camera, backend: str, seed: int) -> dict[str, torch.Tensor]:
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend=backend, background=(0.2, 0.5, 0.7))
    ci, ca, cd = _cotangents(cam, seed)
    ((out.image * ci).sum() + (out.alpha * ca).sum() + (out.depth * cd).sum()).backward()
    return {k: v.grad for k, v in gg.params().items()}


@pytest.mark.parametrize("scene", GRAD_SCENES, ids=GRAD_IDS)
def test_render_gradients_match_reference(scene):
    g, cam = make_scene(*scene)
    got = _grads(g, cam, "cpu", scene[1])
    want = _grads(g, cam, "reference", scene[1])
    for name in PARAM_NAMES:
        assert got[name] is not None, name
        assert_rel_close(got[name], want[name], f"grad {name}")


# -- render(): forward mode -----------------------------------------------------------------------
def _jvp(g: Gaussians, cam: Camera, backend: str, seed: int):
    tangents = _tangents(g, seed)
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tangents[k]) for k, v in g.params().items()})
        out = render(gd, cam, backend=backend, background=(0.2, 0.5, 0.7))
        return [fwAD.unpack_dual(t) for t in (out.image, out.alpha, out.depth)]


@pytest.mark.parametrize("scene", GRAD_SCENES, ids=GRAD_IDS)
def test_render_forward_ad_matches_reference(scene):
    g, cam = make_scene(*scene)
    got = _jvp(g, cam, "cpu", scene[1])
    want = _jvp(g, cam, "reference", scene[1])
    for name, a, b in zip(("image", "alpha", "depth"), got, want):
        assert_image_close(a.primal, b.primal, f"{name} primal")
        assert a.tangent is not None, name
        assert_rel_close(a.tangent, b.tangent.detach(), f"{name} tangent")


def _jvp_then_backward(g: Gaussians, cam: Camera, backend: str, seed: int):
    """The trust-region estimator's pattern: a JVP render, then reverse mode through it."""
    tangents = _tangents(g, seed)
    gen = torch.Generator().manual_seed(3000 + seed)
    target = torch.rand(cam.height, cam.width, 3, generator=gen)
    gg = g.clone().requires_grad_()
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tangents[k]) for k, v in gg.params().items()})
        out = render(gd, cam, backend=backend)
        residual = out.image - target
        primal, tangent = fwAD.unpack_dual(residual)
        primal.backward(tangent.detach())
    return tangent.detach(), {k: v.grad for k, v in gg.params().items()}


@pytest.mark.parametrize("scene", [GRAD_SCENES[i] for i in (1, 2, 4)], ids=[GRAD_IDS[i] for i in (1, 2, 4)])
def test_jvp_then_backward_matches_reference(scene):
    g, cam = make_scene(*scene)
    t_cpu, g_cpu = _jvp_then_backward(g, cam, "cpu", scene[1])
    t_ref, g_ref = _jvp_then_backward(g, cam, "reference", scene[1])
    assert_rel_close(t_cpu, t_ref, "residual tangent")
    for name in PARAM_NAMES:
        assert_rel_close(g_cpu[name], g_ref[name], f"grad {name}")


def test_torch_func_jvp_and_vjp():
    g, cam = make_scene(*SCENES[3])
    params = g.params()
    tangents = _tangents(g, 0)
    ci, _, _ = _cotangents(cam, 0)

    def image_fn(backend):
        return lambda p: render(Gaussians.from_params(p), cam, backend=backend).image

    prim_c, tan_c = torch.func.jvp(image_fn("cpu"), (params,), (tangents,))
    prim_r, tan_r = torch.func.jvp(image_fn("reference"), (params,), (tangents,))
    assert_image_close(prim_c, prim_r, "func.jvp primal")
    assert_rel_close(tan_c, tan_r, "func.jvp tangent")

    _, vjp_c = torch.func.vjp(image_fn("cpu"), params)
    _, vjp_r = torch.func.vjp(image_fn("reference"), params)
    gc, gr = vjp_c(ci)[0], vjp_r(ci)[0]
    for name in PARAM_NAMES:
        assert_rel_close(gc[name], gr[name], f"func.vjp {name}")

    grad_c = torch.func.grad(lambda p: (image_fn("cpu")(p) * ci).sum())(params)
    for name in PARAM_NAMES:
        assert_rel_close(grad_c[name], gr[name], f"func.grad {name}")


def test_double_backward_and_vmap_raise_clearly():
    g, cam = make_scene(*SCENES[2])
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend="cpu")
    (grad,) = torch.autograd.grad(out.image.sum(), gg.means, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()
    m, con, f, o, radii, depths, bg = _random_splats(4, 50, 20, 20, 3)
    bins = bin_splats(m, radii, depths, 20, 20)
    with pytest.raises(NotImplementedError, match="vmap"):
        torch.func.vmap(lambda ff: composite_cpu(m, con, ff, o, bins, 20, 20, bg)[0])(torch.stack([f, f]))


# -- compositor level ---------------------------------------------------------------------------
def _random_splats(seed: int, v: int, width: int, height: int, n_ch: int):
    gen = torch.Generator().manual_seed(seed)
    means2d = torch.stack([
        torch.rand(v, generator=gen) * (width + 40) - 20,
        torch.rand(v, generator=gen) * (height + 40) - 20,
    ], dim=1)
    # random SPD covariances with eigenvalues from 0.3 to ~400 px², inverted to conics
    ang = torch.rand(v, generator=gen) * math.pi
    l1 = 0.3 + torch.rand(v, generator=gen) ** 2 * 400
    l2 = 0.3 + torch.rand(v, generator=gen) ** 2 * 40
    c, s = torch.cos(ang), torch.sin(ang)
    cov_a = c * c * l1 + s * s * l2
    cov_b = c * s * (l1 - l2)
    cov_c = s * s * l1 + c * c * l2
    det = cov_a * cov_c - cov_b * cov_b
    conics = torch.stack([cov_c / det, -cov_b / det, cov_a / det], dim=1)
    radii = torch.ceil(3.0 * torch.sqrt(torch.maximum(l1, l2))).long()
    opacities = torch.rand(v, generator=gen) * 0.999 + 0.0005
    features = torch.randn(v, n_ch, generator=gen)
    depths = 0.3 + 10 * torch.rand(v, generator=gen)
    depths[: v // 10] = depths[v // 10: 2 * (v // 10)]  # depth ties
    background = torch.randn(n_ch, generator=gen)
    return means2d, conics, features, opacities, radii, depths, background


@pytest.mark.parametrize("seed,v,width,height,n_ch", [
    (0, 1, 17, 9, 1), (1, 50, 37, 23, 3), (2, 800, 129, 65, 4), (3, 2500, 80, 72, 7),
])
def test_compositor_matches_reference(seed, v, width, height, n_ch):
    m, con, f, o, radii, depths, bg = _random_splats(seed, v, width, height, n_ch)
    bins = bin_splats(m, radii, depths, width, height)
    inputs = [t.clone().requires_grad_() for t in (m, con, f, o, bg)]
    inputs_r = [t.clone().requires_grad_() for t in (m, con, f, o, bg)]
    img, alpha = composite_cpu(inputs[0], inputs[1], inputs[2], inputs[3], bins, width, height, inputs[4])
    img_r, alpha_r = composite_reference(inputs_r[0], inputs_r[1], inputs_r[2], inputs_r[3], bins,
                                         width, height, inputs_r[4])
    assert_image_close(img, img_r, "image")
    assert_image_close(alpha, alpha_r, "alpha")
    gen = torch.Generator().manual_seed(seed + 77)
    ci = torch.randn(img.shape, generator=gen)
    ca = torch.randn(alpha.shape, generator=gen)
    ((img * ci).sum() + (alpha * ca).sum()).backward()
    ((img_r * ci).sum() + (alpha_r * ca).sum()).backward()
    for name, a, b in zip(("means2d", "conics", "features", "opacities", "background"), inputs, inputs_r):
        assert_rel_close(a.grad, b.grad, f"grad {name}")
    # forward mode, including a background tangent
    tangents = [torch.randn(t.shape, generator=gen) for t in (m, con, f, o, bg)]
    outs = []
    for fn in (composite_cpu, composite_reference):
        with fwAD.dual_level():
            d = [fwAD.make_dual(t, dt) for t, dt in zip((m, con, f, o, bg), tangents)]
            res = fn(d[0], d[1], d[2], d[3], bins, width, height, d[4])
            outs.append([fwAD.unpack_dual(r).tangent for r in res])
    assert_rel_close(outs[0][0], outs[1][0], "image tangent")
    assert_rel_close(outs[0][1], outs[1][1], "alpha tangent")


def test_compositor_partial_tangents_and_grads():
    """Only some inputs dual / requiring grad; unused outputs; non-contiguous inputs."""
    m, con, f, o, radii, depths, bg = _random_splats(5, 300, 50, 40, 3)
    bins = bin_splats(m, radii, depths, 50, 40)
    f_nc = torch.stack([f, f], dim=2)[:, :, 0]  # non-contiguous view, same values
    assert not f_nc.is_contiguous()
    ref = composite_reference(m, con, f, o, bins, 50, 40, bg)
    got = composite_cpu(m, con, f_nc, o, bins, 50, 40, bg)
    assert_image_close(got[0], ref[0], "image (non-contiguous features)")
    tan = torch.randn_like(o)
    res = []
    for fn in (composite_cpu, composite_reference):
        with fwAD.dual_level():
            img, alpha = fn(m, con, f, fwAD.make_dual(o, tan), bins, 50, 40, bg)
            res.append(fwAD.unpack_dual(img).tangent)
    assert_rel_close(res[0], res[1], "image tangent (opacity only)")
    mm = m.clone().requires_grad_()
    img, alpha = composite_cpu(mm, con, f, o, bins, 50, 40, bg)
    alpha.sum().backward()  # the image is unused
    mr = m.clone().requires_grad_()
    composite_reference(mr, con, f, o, bins, 50, 40, bg)[1].sum().backward()
    assert_rel_close(mm.grad, mr.grad, "means2d grad from alpha only")


def test_float64_falls_back_to_reference():
    m, con, f, o, radii, depths, bg = _random_splats(6, 200, 40, 30, 3)
    bins = bin_splats(m, radii, depths, 40, 30)
    args = [t.double() for t in (m, con, f, o)]
    got = composite_cpu(*args, bins, 40, 30, bg.double())
    want = composite_reference(*args, bins, 40, 30, bg.double())
    assert got[0].dtype == torch.float64
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_half_precision_inputs_are_computed_in_float32():
    m, con, f, o, radii, depths, bg = _random_splats(7, 200, 40, 30, 3)
    bins = bin_splats(m, radii, depths, 40, 30)
    img, alpha = composite_cpu(m, con, f.half(), o, bins, 40, 30, bg)
    assert img.dtype == torch.float16
    want = composite_reference(m, con, f.half().float(), o, bins, 40, 30, bg)[0]
    assert (img.float() - want).abs().max() < 5e-3


def test_empty_scene_and_empty_tiles():
    g, cam = make_scene("ball", 11, 50, 37, 23)
    g.means[:, 2] = -10.0  # everything behind the camera
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend="cpu", background=(0.1, 0.2, 0.3))
    assert torch.equal(out.image, torch.tensor([0.1, 0.2, 0.3]).expand(23, 37, 3))
    assert torch.equal(out.alpha, torch.zeros(23, 37))
    out.image.sum().backward()
    assert all(v.grad is None or not bool(v.grad.any()) for v in gg.params().values())


def test_gradients_are_deterministic():
    g, cam = make_scene(*SCENES[3])
    a = _grads(g, cam, "cpu", 0)
    b = _grads(g, cam, "cpu", 0)
    for name in PARAM_NAMES:
        assert torch.equal(a[name], b[name]), name


# -- kernel internals ---------------------------------------------------------------------------
def test_pixel_box_culling_never_changes_results():
    """Kernels with the conservative per-splat boxes give bit-identical outputs to no culling.

    Includes opacities at the 1/255 threshold, nearly degenerate and indefinite conics,
    non-finite values and splats far off screen.
    """
    width, height = 70, 50
    m, con, f, o, radii, depths, bg = _random_splats(8, 3000, width, height, 4)
    gen = torch.Generator().manual_seed(9)
    o[:500] = (1.0 / 255.0) * (1.0 + 1e-3 * torch.randn(500, generator=gen))
    o[500:1000] = 0.999
    con[1000:1100, 1] = torch.sqrt(con[1000:1100, 0] * con[1000:1100, 2]) * (1 - 1e-6)  # near-degenerate
    con[1100:1150, 1] = 2.0 * torch.sqrt(con[1100:1150, 0] * con[1100:1150, 2])        # indefinite
    con[1150:1160, 0] = float("inf")
    m[1160:1170, 0] = float("nan")
    m[1170:1200] += 1e4
    radii[1000:1200] = 200
    bins = bin_splats(torch.nan_to_num(m), radii, depths, width, height)
    gdata = _pack(m, con, o, f)
    sid, off = bins.splat_ids.numpy(), bins.tile_offsets.numpy()
    bgn = bg.numpy()
    boxes = _boxes(gdata, width, height)
    full = np.tile(np.array([0, width - 1, 0, height - 1], dtype=np.int32), (gdata.shape[0], 1))
    assert (boxes[:, 1] - boxes[:, 0]).mean() < width - 1  # culling is active

    def run(bx):
        img = np.empty((height, width, 4), np.float32)
        tf = np.empty((height, width), np.float64)
        nu = np.empty((height, width), np.int32)
        K.run_parallel(K.forward_kernel, gdata, bx, sid, off, bins.grid_x, bins.grid_y, width,
                       height, bgn, img, tf, nu)
        tdata = np.random.default_rng(0).standard_normal(gdata.shape).astype(np.float32)
        jimg, jtf, jnu = np.empty_like(img), np.empty_like(tf), np.empty_like(nu)
        jd, ja = np.empty_like(img), np.empty((height, width), np.float32)
        K.run_parallel(K.jvp_kernel, gdata, tdata, bx, sid, off, bins.grid_x, bins.grid_y, width,
                       height, bgn, jimg, jtf, jnu, jd, ja)
        gi = np.random.default_rng(1).standard_normal(img.shape).astype(np.float32)
        ga = np.random.default_rng(2).standard_normal(tf.shape).astype(np.float32)
        ent = np.empty((sid.shape[0], gdata.shape[1]), np.float32)
        K.run_parallel(K.backward_kernel, gdata, bx, sid, off, bins.grid_x, bins.grid_y, width,
                       height, bgn, tf, nu, gi, ga, ent)
        return img, tf, nu, jimg, jd, ja, ent

    for a, b in zip(run(boxes), run(full)):
        np.testing.assert_array_equal(a, b)


def test_no_per_tile_cap_long_lists():
    """4000 splats on one pixel region: every one is composited until T < 1e-4 (no truncation)."""
    v = 4000
    means2d = torch.tensor([[8.0, 8.0]]).expand(v, 2).clone()
    conics = torch.tensor([[0.5, 0.0, 0.5]]).expand(v, 3).clone()
    opacities = torch.full((v,), 0.004)  # just above 1/255: ~2300 splats until T < 1e-4
    features = torch.rand(v, 3, generator=torch.Generator().manual_seed(0))
    radii = torch.full((v,), 5, dtype=torch.long)
    depths = torch.linspace(1.0, 2.0, v)
    bins = bin_splats(means2d, radii, depths, 16, 16)
    got = composite_cpu(means2d, conics, features, opacities, bins, 16, 16, torch.zeros(3))
    want = composite_reference(means2d, conics, features, opacities, bins, 16, 16, torch.zeros(3))
    assert_image_close(got[0], want[0], "image")
    assert_image_close(got[1], want[1], "alpha")
    assert float(got[1][8, 8]) > 0.9998


def test_counting_sort_binning_is_identical_to_torch_binning():
    for seed, v, w, h in ((0, 1, 16, 16), (1, 500, 37, 23), (2, 5000, 129, 65), (3, 20000, 400, 300)):
        m, con, f, o, radii, depths, bg = _random_splats(seed, v, w, h, 1)
        depths[::3] = depths[0]  # many exact ties
        a = bin_splats(m, radii, depths, w, h)
        gx, gy = (w + 15) // 16, (h + 15) // 16
        b = _bin_splats_torch(*tile_rect(m, radii, w, h), depths, gx, gy)
        assert torch.equal(a.splat_ids, b.splat_ids) and torch.equal(a.tile_offsets, b.tile_offsets)
        assert a.splat_ids.dtype == b.splat_ids.dtype and a.tile_offsets.dtype == b.tile_offsets.dtype



def test_numba_tile_rects_equal_torch_tile_rect():
    """Rectangles at and around tile boundaries, off screen and huge: identical to tile_rect."""
    from trsplat.render.cpu_tiles import tile_rects

    gen = torch.Generator().manual_seed(11)
    edges = torch.arange(-48, 200, 16, dtype=torch.float32)
    around = torch.cat([edges, edges - 0.5, edges + 0.5, torch.nextafter(edges, edges + 1),
                        torch.nextafter(edges, edges - 1)])
    xs = torch.cat([around, torch.rand(2000, generator=gen) * 300 - 50,
                    torch.tensor([1e6, -1e6, 3.4e38, -3.4e38])])
    ys = xs[torch.randperm(xs.numel(), generator=gen)]
    m = torch.stack([xs, ys], 1)
    radii = torch.randint(0, 40, (xs.numel(),), generator=gen)
    for w, h in ((16, 16), (129, 65), (200, 120)):
        want = tile_rect(m, radii, w, h)
        got = tile_rects(m.numpy(), radii.numpy(), 16, (w + 15) // 16, (h + 15) // 16)
        for a, b in zip(got, want):
            assert torch.equal(torch.from_numpy(a), b)

# -- projection with numba derivatives (cpu_project) --------------------------------------------
from trsplat.render.cpu_project import project_cpu  # noqa: E402
from trsplat.render.project import project  # noqa: E402

PROJ_OUTS = ("means2d", "conics", "depths", "colors", "opacities")


def _project_all(fn, g: Gaussians, cam: Camera, seed: int):
    """Primal, gradients for random cotangents, and forward-mode tangents of ``fn``."""
    with torch.no_grad():
        p0 = project(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh, cam, 3)
    gen = torch.Generator().manual_seed(4000 + seed)
    cot = {k: torch.randn(getattr(p0, k).shape, generator=gen) for k in PROJ_OUTS}
    gg = g.clone().requires_grad_()
    p = fn(gg.means, gg.log_scales, gg.quats, gg.opacity_logits, gg.sh, cam, 3)
    sum((getattr(p, k) * cot[k]).sum() for k in PROJ_OUTS).backward()
    grads = {k: v.grad for k, v in gg.params().items()}
    tangents = _tangents(g, seed)
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tangents[k]) for k, v in g.params().items()})
        pd = fn(gd.means, gd.log_scales, gd.quats, gd.opacity_logits, gd.sh, cam, 3)
        tans = {k: fwAD.unpack_dual(getattr(pd, k)).tangent for k in PROJ_OUTS}
    return p, grads, tans


@pytest.mark.parametrize("scene", GRAD_SCENES, ids=GRAD_IDS)
def test_project_cpu_matches_project(scene):
    g, cam = make_scene(*scene)
    for degree in (3, 1):
        pa, ga, ta = _project_all(lambda *a: project_cpu(*a[:-1], degree), g, cam, scene[1])
        pb, gb, tb = _project_all(lambda *a: project(*a[:-1], degree), g, cam, scene[1])
        for k in ("ids", "radii"):  # same culling and tile rectangles
            assert torch.equal(getattr(pa, k), getattr(pb, k)), k
        for k in PROJ_OUTS:  # float64 kernel vs torch's float32: equal to float32 rounding
            assert_image_close(getattr(pa, k).detach(), getattr(pb, k).detach(), f"primal {k}")
        for k in PARAM_NAMES:
            assert_rel_close(ga[k], gb[k], f"grad {k} (degree {degree})")
        for k in PROJ_OUTS:
            assert_rel_close(ta[k], tb[k].detach(), f"tangent {k} (degree {degree})")


def test_project_cpu_torch_func():
    g, cam = make_scene(*SCENES[3])
    params = g.params()
    tangents = _tangents(g, 1)

    def conics(fn):
        return lambda p: fn(p["means"], p["log_scales"], p["quats"], p["opacity_logits"],
                            torch.cat([p["sh_dc"], p["sh_rest"]], 1), cam, 3).conics

    _, ta = torch.func.jvp(conics(project_cpu), (params,), (tangents,))
    _, tb = torch.func.jvp(conics(project), (params,), (tangents,))
    assert_rel_close(ta, tb, "func.jvp conics tangent")
    ct = torch.randn(tb.shape, generator=torch.Generator().manual_seed(5))
    ga = torch.func.vjp(conics(project_cpu), params)[1](ct)[0]
    gb = torch.func.vjp(conics(project), params)[1](ct)[0]
    for name in PARAM_NAMES:
        assert_rel_close(ga[name], gb[name], f"func.vjp {name}")


def test_project_cpu_float64_and_double_backward():
    g, cam = make_scene(*SCENES[2])
    gd = g.map(lambda t: t.double())
    a = project_cpu(gd.means, gd.log_scales, gd.quats, gd.opacity_logits, gd.sh, cam, 3)
    b = project(gd.means, gd.log_scales, gd.quats, gd.opacity_logits, gd.sh, cam, 3)
    assert a.conics.dtype == torch.float64 and torch.equal(a.conics, b.conics)
    gg = g.clone().requires_grad_()
    p = project_cpu(gg.means, gg.log_scales, gg.quats, gg.opacity_logits, gg.sh, cam, 3)
    (gr,) = torch.autograd.grad(p.conics.sum(), gg.means, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gr.sum().backward()
