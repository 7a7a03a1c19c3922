"""The numba-cuda ``cuda`` compositing backend against the pure-torch ``reference`` oracle.

Three groups of tests:

* **Simulator** (run everywhere numba-cuda is installed): the kernels run in numba's CUDA
  simulator (``NUMBA_ENABLE_CUDASIM=1``) on tiny scenes (≤ 2x2 tiles). The simulator must be
  enabled before ``numba.cuda`` is imported, so all simulator checks run in ONE subprocess
  (:func:`_sim_main`, started by the ``sim_results`` fixture); this process never imports
  ``numba.cuda`` for them and the ``cpu`` backend's numba is unaffected. Each check is
  reported as its own test. Tolerances are strict (as ``test_composite_cpu``).
* **No GPU** (run everywhere): a clear :class:`TrsplatError` without a GPU or without
  numba-cuda, ``import trsplat`` / the ``cpu`` backend without numba-cuda, float64 fallback.
* **GPU** (``skipif(not torch.cuda.is_available())``): the same checks as the simulator on
  larger random scenes, plus warp-reduction vs per-pixel atomics, run-to-run agreement of the
  (atomic, hence non-deterministic) gradients, non-default streams, long lists, CPU inputs.
  On a GPU ``expf``, FMA contraction and float32 transmittance differ from the reference by
  float32 rounding, so a skip/stop decision within an ulp of its threshold may flip; the GPU
  comparisons therefore allow a handful of outlier values (counted and reported) within a
  loose bound, and every other value must meet the strict tolerance.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from trsplat.camera import Camera, look_at
from trsplat.errors import TrsplatError
from trsplat.gaussians import PARAM_NAMES, Gaussians
from trsplat.render import render
from trsplat.render.composite_reference import composite_reference

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()
IMG_ATOL = 1e-5
IMG_RTOL = 1e-5
GRAD_RTOL = 1e-4
BG = (0.2, 0.5, 0.7)


# == comparison helpers ==========================================================================
class Tol:
    """``outliers``: how many values may miss the strict tolerance (GPU near-tie flips) as long
    as they stay within ``loose`` (relative to max(1, max |ref|))."""

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


def assert_image_close(actual, expected, what, tol: Tol = STRICT):
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    err = (actual - expected).abs()
    bad = ~(err <= IMG_ATOL + IMG_RTOL * expected.abs())
    _check(bad, err, expected, what, tol, f"{IMG_ATOL:g} + {IMG_RTOL:g}·|ref|")


def assert_rel_close(actual, expected, what, tol: Tol = STRICT, rtol: float = GRAD_RTOL):
    assert actual is not None, f"{what}: missing"
    actual, expected = actual.detach().float().cpu(), expected.detach().float().cpu()
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    err = (actual - expected).abs()
    bad = ~(err <= rtol * scale + 1e-7)
    _check(bad, err, expected, what, tol, f"{rtol:g}·max|ref| (= {rtol * scale:.3g})")


# == scenes ======================================================================================
def _camera(width: int, height: int, fov_scale: float = 0.8, off_centre: bool = False) -> Camera:
    w2c = look_at(torch.tensor([0.0, 0.0, -4.0]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    f = fov_scale * width
    cx = width / 2.0 + (1.7 if off_centre else 0.0)
    cy = height / 2.0 - (1.2 if off_centre else 0.0)
    return Camera(width, height, f, f, cx, cy, w2c)


def make_scene(kind: str, seed: int, n: int, width: int, height: int):
    """(Gaussians, Camera): ``ball`` (a few px wide, random opacities, some opaque), ``stacked``
    (long lists in one tile, reaches T < 1e-4), ``wide`` (splats over many tiles), ``behind``
    (depths from behind the camera to far away, off-screen splats)."""
    gen = torch.Generator().manual_seed(seed)
    cam = _camera(width, height, off_centre=(seed % 2 == 1))
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
        logits = 1.0 * torch.randn(n, generator=gen) - 0.5
    elif kind == "behind":
        means = torch.stack([
            6.0 * torch.randn(n, generator=gen),
            4.0 * torch.randn(n, generator=gen),
            -8.0 + 14.0 * torch.rand(n, generator=gen),
        ], dim=1)
        log_scale = math.log(0.05) + 0.7 * torch.randn(n, 3, generator=gen)
        logits = 2.0 * torch.randn(n, generator=gen)
    else:
        raise ValueError(kind)
    g = Gaussians(
        means=means.float(), log_scales=log_scale.float(),
        quats=torch.randn(n, 4, generator=gen), opacity_logits=logits.float(),
        sh_dc=0.6 * torch.randn(n, 1, 3, generator=gen),
        sh_rest=0.1 * torch.randn(n, 15, 3, generator=gen),
    )
    return g, cam


def random_splats(seed: int, v: int, width: int, height: int, n_ch: int, *, max_var: float = 100.0,
                  min_var: float = 0.3, opacity: tuple[float, float] = (0.0005, 0.9995),
                  spread: float = 8.0):
    """Random screen-space splats: means around the image, SPD conics, radii, depths (with
    exact ties), features and a background, all float32 on the CPU."""
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


def _cotangents(cam: Camera, seed: int, device):
    gen = torch.Generator().manual_seed(1000 + seed)
    return tuple(t.to(device) for t in (torch.randn(cam.height, cam.width, 3, generator=gen),
                                        torch.randn(cam.height, cam.width, generator=gen),
                                        0.1 * torch.randn(cam.height, cam.width, generator=gen)))


def _tangents(g: Gaussians, seed: int, device) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(2000 + seed)
    return {k: torch.randn(v.shape, generator=gen).to(device) for k, v in g.params().items()}


# == checks shared by the simulator and the GPU tests ============================================
# Each takes the scene spec, the device and a tolerance and raises AssertionError on mismatch.
def _on(g: Gaussians, cam: Camera, device):
    return g.to(device), cam.to(device)


def check_forward(scene, device, tol: Tol = STRICT):
    g, cam = _on(*make_scene(*scene), device)
    out = render(g, cam, backend="cuda", background=BG)
    ref = render(g, cam, backend="reference", background=BG)
    assert out.image.dtype == torch.float32 and out.image.shape == (cam.height, cam.width, 3)
    assert out.image.device == g.means.device
    for name in ("image", "alpha", "depth"):
        assert_image_close(getattr(out, name), getattr(ref, name), name, tol)
    assert torch.equal(out.visible, ref.visible) and torch.equal(out.radii, ref.radii)


def _grads(g, cam, backend, seed, device):
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend=backend, background=BG)
    ci, ca, cd = _cotangents(cam, seed, device)
    ((out.image * ci).sum() + (out.alpha * ca).sum() + (out.depth * cd).sum()).backward()
    return {k: v.grad for k, v in gg.params().items()}


def check_gradients(scene, device, tol: Tol = STRICT):
    g, cam = _on(*make_scene(*scene), device)
    got = _grads(g, cam, "cuda", scene[1], device)
    want = _grads(g, cam, "reference", scene[1], device)
    for name in PARAM_NAMES:
        assert_rel_close(got[name], want[name], f"grad {name}", tol)


def _jvp(g, cam, backend, seed, device):
    tangents = _tangents(g, seed, device)
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tangents[k]) for k, v in g.params().items()})
        out = render(gd, cam, backend=backend, background=BG)
        return [fwAD.unpack_dual(t) for t in (out.image, out.alpha, out.depth)]


def check_forward_ad(scene, device, tol: Tol = STRICT):
    g, cam = _on(*make_scene(*scene), device)
    got = _jvp(g, cam, "cuda", scene[1], device)
    want = _jvp(g, cam, "reference", scene[1], device)
    for name, a, b in zip(("image", "alpha", "depth"), got, want):
        assert_image_close(a.primal, b.primal, f"{name} primal", tol)
        assert a.tangent is not None, name
        assert_rel_close(a.tangent, b.tangent, f"{name} tangent", tol)


def _jvp_then_backward(g, cam, backend, seed, device):
    """The trust-region estimator's pattern: a JVP render, then reverse mode through it."""
    tangents = _tangents(g, seed, device)
    gen = torch.Generator().manual_seed(3000 + seed)
    target = torch.rand(cam.height, cam.width, 3, generator=gen).to(device)
    gg = g.clone().requires_grad_()
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tangents[k]) for k, v in gg.params().items()})
        out = render(gd, cam, backend=backend)
        primal, tangent = fwAD.unpack_dual(out.image - target)
        primal.backward(tangent.detach())
    return tangent.detach(), {k: v.grad for k, v in gg.params().items()}


def check_jvp_then_backward(scene, device, tol: Tol = STRICT):
    g, cam = _on(*make_scene(*scene), device)
    t_got, g_got = _jvp_then_backward(g, cam, "cuda", scene[1], device)
    t_ref, g_ref = _jvp_then_backward(g, cam, "reference", scene[1], device)
    assert_rel_close(t_got, t_ref, "residual tangent", tol)
    for name in PARAM_NAMES:
        assert_rel_close(g_got[name], g_ref[name], f"JᵀJv {name}", tol)


def check_torch_func(scene, device, tol: Tol = STRICT):
    g, cam = _on(*make_scene(*scene), device)
    params = g.params()
    tangents = _tangents(g, 0, device)
    ci, _, _ = _cotangents(cam, 0, device)

    def image_fn(backend):
        return lambda p: render(Gaussians.from_params(p), cam, backend=backend).image

    prim_c, tan_c = torch.func.jvp(image_fn("cuda"), (params,), (tangents,))
    prim_r, tan_r = torch.func.jvp(image_fn("reference"), (params,), (tangents,))
    assert_image_close(prim_c, prim_r, "func.jvp primal", tol)
    assert_rel_close(tan_c, tan_r, "func.jvp tangent", tol)
    gc = torch.func.vjp(image_fn("cuda"), params)[1](ci)[0]
    gr = torch.func.vjp(image_fn("reference"), params)[1](ci)[0]
    for name in PARAM_NAMES:
        assert_rel_close(gc[name], gr[name], f"func.vjp {name}", tol)


def check_compositor(spec, device, tol: Tol = STRICT):
    """Compositor level, random splats with ``n_ch`` channels: image, alpha, every input's
    gradient (background included) and tangent (background tangent included)."""
    from trsplat.render.composite_cuda import composite_cuda
    from trsplat.render.tiles import bin_splats

    seed, v, width, height, n_ch, kwargs = spec
    kwargs = dict(kwargs)
    min_list = kwargs.pop("min_list", 0)      # the case must have a tile list this long
    min_alpha = kwargs.pop("min_alpha", 0.0)  # ... and every pixel at least this opaque
    m, con, f, o, radii, depths, bg = (t.to(device) for t in
                                       random_splats(seed, v, width, height, n_ch, **kwargs))
    bins = bin_splats(m, radii, depths, width, height)
    assert int((bins.tile_offsets[1:] - bins.tile_offsets[:-1]).max()) >= min_list
    ins = [t.clone().requires_grad_() for t in (m, con, f, o, bg)]
    ins_r = [t.clone().requires_grad_() for t in (m, con, f, o, bg)]
    img, alpha = composite_cuda(*ins[:4], bins, width, height, ins[4])
    img_r, alpha_r = composite_reference(*ins_r[:4], bins, width, height, ins_r[4])
    assert_image_close(img, img_r, "image", tol)
    assert_image_close(alpha, alpha_r, "alpha", tol)
    assert float(alpha_r.detach().min()) >= min_alpha
    gen = torch.Generator().manual_seed(seed + 77)
    ci = torch.randn(img.shape, generator=gen).to(device)
    ca = torch.randn(alpha.shape, generator=gen).to(device)
    ((img * ci).sum() + (alpha * ca).sum()).backward()
    ((img_r * ci).sum() + (alpha_r * ca).sum()).backward()
    for name, a, b in zip(("means2d", "conics", "features", "opacities", "background"), ins, ins_r):
        assert_rel_close(a.grad, b.grad, f"grad {name}", tol)
    tangents = [torch.randn(t.shape, generator=gen).to(device) for t in (m, con, f, o, bg)]
    outs = []
    for fn in (composite_cuda, composite_reference):
        with fwAD.dual_level():
            d = [fwAD.make_dual(t, dt) for t, dt in zip((m, con, f, o, bg), tangents)]
            res = fn(d[0], d[1], d[2], d[3], bins, width, height, d[4])
            outs.append([fwAD.unpack_dual(r) for r in res])
    for i, name in enumerate(("image", "alpha")):
        assert_image_close(outs[0][i].primal, outs[1][i].primal, f"{name} primal (JVP)", tol)
        assert_rel_close(outs[0][i].tangent, outs[1][i].tangent, f"{name} tangent", tol)


def check_partial_inputs(device, tol: Tol = STRICT):
    """Only some inputs dual / requiring grad, an unused output, non-contiguous inputs."""
    from trsplat.render.composite_cuda import composite_cuda
    from trsplat.render.tiles import bin_splats

    w, h = 16, 12  # one tile: the simulator runs one block
    m, con, f, o, radii, depths, bg = (t.to(device) for t in random_splats(5, 20, w, h, 3))
    bins = bin_splats(m, radii, depths, w, h)
    f_nc = torch.stack([f, f], dim=2)[:, :, 0]
    assert not f_nc.is_contiguous()
    ref = composite_reference(m, con, f, o, bins, w, h, bg)
    got = composite_cuda(m, con, f_nc, o, bins, w, h, bg)
    assert_image_close(got[0], ref[0], "image (non-contiguous features)", tol)
    tan = torch.randn_like(o)
    res = []
    for fn in (composite_cuda, composite_reference):
        with fwAD.dual_level():
            img, _ = fn(m, con, f, fwAD.make_dual(o, tan), bins, w, h, bg)
            res.append(fwAD.unpack_dual(img).tangent)
    assert_rel_close(res[0], res[1], "image tangent (opacity only)", tol)
    mm, mr = m.clone().requires_grad_(), m.clone().requires_grad_()
    composite_cuda(mm, con, f, o, bins, w, h, bg)[1].sum().backward()  # image unused
    composite_reference(mr, con, f, o, bins, w, h, bg)[1].sum().backward()
    assert_rel_close(mm.grad, mr.grad, "means2d grad from alpha only", tol)


def check_empty(device, tol: Tol = STRICT):
    g, cam = _on(*make_scene("ball", 11, 6, 20, 18), device)
    g.means[:, 2] = -10.0  # everything behind the camera: no tile lists at all
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend="cuda", background=(0.1, 0.2, 0.3))
    assert torch.equal(out.image.cpu(), torch.tensor([0.1, 0.2, 0.3]).expand(18, 20, 3))
    assert torch.equal(out.alpha.cpu(), torch.zeros(18, 20))
    out.image.sum().backward()
    assert all(v.grad is None or not bool(v.grad.any()) for v in gg.params().values())


def check_unsupported_raise(device, tol: Tol = STRICT):
    from trsplat.render.composite_cuda import composite_cuda
    from trsplat.render.tiles import bin_splats

    g, cam = _on(*make_scene("ball", 1, 6, 20, 18), device)
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend="cuda")
    (grad,) = torch.autograd.grad(out.image.sum(), gg.means, create_graph=True)
    try:
        grad.sum().backward()
    except RuntimeError as e:
        assert "double backward" in str(e), str(e)
    else:
        raise AssertionError("double backward did not raise")
    m, con, f, o, radii, depths, bg = (t.to(device) for t in random_splats(4, 10, 20, 18, 3))
    bins = bin_splats(m, radii, depths, 20, 18)
    try:
        torch.func.vmap(lambda ff: composite_cuda(m, con, ff, o, bins, 20, 18, bg)[0])(
            torch.stack([f, f]))
    except NotImplementedError as e:
        assert "vmap" in str(e), str(e)
    else:
        raise AssertionError("vmap did not raise")


# Simulator cases: tiny (2x2 tiles at most), chosen so every code path runs once: early stop,
# block-wide early exit, batches of 256 (compositor "long" and "opaque" cases), background
# gradient and tangent, off-centre principal point, tile-crossing splats, culled splats.
SIM_SCENES = [("ball", 0, 10, 20, 18), ("wide", 3, 6, 20, 18), ("stacked", 5, 30, 20, 18),
              ("behind", 6, 40, 20, 18)]
SIM_COMPOSITOR = [
    (0, 12, 20, 18, 3, {}),
    # 300 faint wide splats over one tile (16x4 pixels, to keep the simulator fast): > 256
    # entries, two batches, no early stop
    (1, 300, 16, 4, 2, dict(opacity=(0.005, 0.015), max_var=2000.0, spread=0.0, min_list=300)),
    # 300 opaque wide splats: every pixel stops after a few, the block exits before batch 2
    (2, 300, 16, 16, 1, dict(opacity=(0.97, 0.999), min_var=200.0, max_var=4000.0, spread=0.0,
                             min_list=300, min_alpha=0.98)),
]


def _sim_checks():
    cpu = torch.device("cpu")
    checks = {}
    for s in SIM_SCENES:
        checks[f"forward[{s[0]}-{s[1]}]"] = (check_forward, s)
    for s in (SIM_SCENES[0], SIM_SCENES[2]):
        checks[f"gradients[{s[0]}-{s[1]}]"] = (check_gradients, s)
        checks[f"forward_ad[{s[0]}-{s[1]}]"] = (check_forward_ad, s)
    checks["jvp_then_backward"] = (check_jvp_then_backward, SIM_SCENES[1])
    checks["torch_func"] = (check_torch_func, SIM_SCENES[0])
    for c in SIM_COMPOSITOR:
        checks[f"compositor[{c[0]}-{c[1]}-{c[2]}x{c[3]}-c{c[4]}]"] = (check_compositor, c)
    checks["partial_inputs"] = (check_partial_inputs, None)
    checks["empty"] = (check_empty, None)
    checks["unsupported_raise"] = (check_unsupported_raise, None)
    return {name: (fn, arg, cpu) for name, (fn, arg) in checks.items()}


SIM_CHECK_NAMES = ["forward[ball-0]", "forward[wide-3]", "forward[stacked-5]", "forward[behind-6]",
                   "gradients[ball-0]", "forward_ad[ball-0]", "gradients[stacked-5]",
                   "forward_ad[stacked-5]", "jvp_then_backward", "torch_func",
                   "compositor[0-12-20x18-c3]", "compositor[1-300-16x4-c2]",
                   "compositor[2-300-16x16-c1]", "partial_inputs", "empty", "unsupported_raise"]


def _sim_main() -> None:
    """Entry point of the simulator subprocess: run every check, print one JSON line."""
    import time
    import traceback

    from trsplat.render.composite_cuda import simulator_enabled

    assert simulator_enabled(), "run with NUMBA_ENABLE_CUDASIM=1"
    torch.set_num_threads(1)
    results = {}
    for name, (fn, arg, device) in _sim_checks().items():
        t0 = time.perf_counter()
        try:
            fn(device) if arg is None else fn(arg, device)
            results[name] = {"ok": True}
        except Exception as e:  # noqa: BLE001 (reported to the parent test)
            results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                             "traceback": traceback.format_exc()[-3000:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
    print("SIMRESULTS " + json.dumps(results))


def _has_numba_cuda() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba_cuda") is not None


# == simulator tests =============================================================================
@pytest.fixture(scope="module")
def sim_results():
    if not _has_numba_cuda():
        pytest.skip("numba-cuda is not installed")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_composite_cuda import _sim_main; _sim_main()"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SIMRESULTS ")]
    assert proc.returncode == 0 and lines, f"simulator subprocess failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("SIMRESULTS "):])


def test_sim_check_list_is_complete():
    assert sorted(_sim_checks()) == sorted(SIM_CHECK_NAMES)


@pytest.mark.parametrize("name", SIM_CHECK_NAMES)
def test_simulator(sim_results, name):
    res = sim_results[name]
    assert res["ok"], f"{res['error']}\n{res['traceback']}"


# == tests without a GPU =========================================================================
@pytest.mark.skipif(HAS_GPU or os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"),
                    reason="needs a machine without a GPU and without the simulator")
def test_no_gpu_raises_clear_error():
    from trsplat.render.backends import default_backend, get_compositor

    with pytest.raises(TrsplatError, match="backend 'cuda' needs an NVIDIA GPU"):
        get_compositor("cuda")
    g, cam = make_scene("ball", 0, 5, 20, 18)
    with pytest.raises(TrsplatError, match="needs an NVIDIA GPU"):
        render(g, cam, backend="cuda")
    assert default_backend() != "cuda"


def test_without_numba_cuda(monkeypatch):
    """numba-cuda missing: a clear error for 'cuda', 'auto' falls back, cpu keeps working."""
    from trsplat.render import backends

    import numba

    monkeypatch.setitem(sys.modules, "numba.cuda", None)  # makes `from numba import cuda` fail
    monkeypatch.delattr(numba, "cuda", raising=False)     # (if a GPU test imported it already)
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # pretend there is a GPU
    with pytest.raises(TrsplatError, match="numba-cuda"):
        backends.get_compositor("cuda")
    assert backends.default_backend() in ("cpu", "reference")


def test_import_and_cpu_backend_without_numba_cuda():
    code = (
        "import sys; sys.modules['numba.cuda'] = None; sys.modules['numba_cuda'] = None\n"
        "import trsplat, torch\n"
        "from trsplat.render import render\n"
        "from trsplat.render.backends import default_backend, get_compositor\n"
        "from trsplat.errors import TrsplatError\n"
        "from tests.test_composite_cuda import make_scene\n"
        "g, cam = make_scene('ball', 0, 5, 20, 18)\n"
        "a = render(g, cam, backend=default_backend()).image\n"
        "b = render(g, cam, backend='reference').image\n"
        "assert (a - b).abs().max() < 1e-5\n"
        "try:\n"
        "    get_compositor('cuda')\n"
        "except TrsplatError as e:\n"
        "    print('ERR', e)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ERR backend 'cuda' needs" in proc.stdout


_PTX_SCRIPT = """
import json, sys
from numba import cuda, types as T
from trsplat.render import cuda_kernels as K
f1, f2, f3 = T.float32[::1], T.float32[:, ::1], T.float32[:, :, ::1]
i64, i2, s = T.int64[::1], T.int32[:, ::1], T.int64
sigs = {
    "forward": (f2, f2, f1, f2, i64, i64, s, s, s, f1, f3, f2, i2),
    "jvp": (f2, f2, f1, f2, f2, f2, f1, f2, i64, i64, s, s, s, f1, f3, f2, i2, f3, f2),
    "backward": (f2, f2, f1, f2, i64, i64, s, s, s, f1, f2, i2, f3, f2, f2),
}
try:
    cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(9, 0))
except Exception as e:  # no NVVM / NVRTC on this machine
    print("SKIP " + type(e).__name__ + ": " + str(e).splitlines()[0][:200])
    sys.exit(0)
out = {}
for n_ch in (1, 4):
    ks = K.kernels(n_ch, True)
    for name, sig in sigs.items():
        ptx, _ = cuda.compile_ptx(getattr(ks, name).py_func, T.void(*sig), cc=(9, 0))
        out[f"{name}{n_ch}"] = {"shfl": ptx.count("shfl.sync"), "f64": ptx.count(".f64 ")}
print("PTX " + json.dumps(out))
"""


def test_gpu_kernels_compile_to_ptx_without_gpu():
    """Type-check and compile the real-GPU kernels (warp shuffles, votes, atomics) for sm_90
    where the CUDA toolkit's NVVM and NVRTC are installed; skipped otherwise."""
    if not _has_numba_cuda():
        pytest.skip("numba-cuda is not installed")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-c", _PTX_SCRIPT], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    if proc.stdout.startswith("SKIP"):
        pytest.skip(f"cannot compile PTX here ({proc.stdout.strip()[5:]})")
    res = json.loads(proc.stdout.split("PTX ", 1)[1])
    for name, info in res.items():
        assert info["f64"] == 0, f"{name}: float64 arithmetic in a kernel"
    assert res["backward4"]["shfl"] == 5 * (6 + 4) and res["forward4"]["shfl"] == 0


def test_float64_falls_back_to_reference():
    """Needs neither a GPU nor numba-cuda: float64 goes to the reference compositor."""
    from trsplat.render.composite_cuda import composite_cuda
    from trsplat.render.tiles import bin_splats

    m, con, f, o, radii, depths, bg = random_splats(6, 40, 40, 30, 3)
    bins = bin_splats(m, radii, depths, 40, 30)
    args = [t.double() for t in (m, con, f, o)]
    got = composite_cuda(*args, bins, 40, 30, bg.double())
    want = composite_reference(*args, bins, 40, 30, bg.double())
    assert got[0].dtype == torch.float64
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# == GPU tests ===================================================================================
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
CUDA = torch.device("cuda") if HAS_GPU else None
GPU_SCENES = [
    ("ball", 0, 1, 37, 23),
    ("ball", 1, 300, 129, 65),
    ("ball", 2, 4000, 200, 120),
    ("ball", 3, 50_000, 640, 480),
    ("stacked", 4, 3000, 48, 32),
    ("wide", 5, 60, 129, 65),
    ("behind", 6, 3000, 129, 65),
]
GPU_IDS = [f"{k}-s{s}-n{n}-{w}x{h}" for k, s, n, w, h in GPU_SCENES]
GPU_COMPOSITOR = [
    (0, 1, 17, 9, 1, {}),
    (1, 50, 37, 23, 3, {}),
    (2, 800, 129, 65, 4, dict(max_var=400.0, spread=20.0)),
    (3, 2500, 80, 72, 7, dict(max_var=400.0, spread=20.0)),
    # long lists without early stop, and opaque ones with the block-wide early exit
    (4, 3000, 32, 32, 4, dict(opacity=(0.004, 0.006), max_var=4000.0, spread=0.0, min_list=2900)),
    (5, 3000, 32, 32, 4, dict(opacity=(0.9, 0.999), min_var=200.0, max_var=4000.0, spread=0.0,
                              min_list=2900, min_alpha=0.98)),
]
GPU_COMP_IDS = [f"{c[0]}-{c[1]}-{c[2]}x{c[3]}-c{c[4]}" for c in GPU_COMPOSITOR]


@gpu
@pytest.mark.parametrize("scene", GPU_SCENES, ids=GPU_IDS)
def test_gpu_forward(scene):
    check_forward(scene, CUDA, GPU_TOL)


@gpu
@pytest.mark.parametrize("scene", GPU_SCENES, ids=GPU_IDS)
def test_gpu_gradients(scene):
    check_gradients(scene, CUDA, GPU_TOL)


@gpu
@pytest.mark.parametrize("scene", GPU_SCENES, ids=GPU_IDS)
def test_gpu_forward_ad(scene):
    check_forward_ad(scene, CUDA, GPU_TOL)


@gpu
@pytest.mark.parametrize("scene", [GPU_SCENES[i] for i in (1, 2, 4)], ids=[GPU_IDS[i] for i in (1, 2, 4)])
def test_gpu_jvp_then_backward(scene):
    check_jvp_then_backward(scene, CUDA, GPU_TOL)


@gpu
def test_gpu_torch_func():
    check_torch_func(GPU_SCENES[2], CUDA, GPU_TOL)


@gpu
@pytest.mark.parametrize("spec", GPU_COMPOSITOR, ids=GPU_COMP_IDS)
def test_gpu_compositor(spec):
    check_compositor(spec, CUDA, GPU_TOL)


@gpu
def test_gpu_partial_inputs_empty_and_unsupported():
    check_partial_inputs(CUDA, GPU_TOL)
    check_empty(CUDA, GPU_TOL)
    check_unsupported_raise(CUDA, GPU_TOL)


@gpu
def test_gpu_render_vs_cpu_reference():
    """The oracle on the CPU (float64-accumulated transmittance) vs the cuda backend."""
    g, cam = make_scene(*GPU_SCENES[2])
    ref = render(g, cam, backend="reference", background=BG)
    out = render(*_on(g, cam, CUDA), backend="cuda", background=BG)
    for name in ("image", "alpha", "depth"):
        assert_image_close(getattr(out, name), getattr(ref, name), name, GPU_TOL)


def _kernel_grads(warp_reduce: bool, spec):
    """Per-splat VJP buffer of the raw kernel with the chosen gradient reduction."""
    from trsplat.render import composite_cuda as CC
    from trsplat.render import cuda_kernels as K
    from trsplat.render.composite_autograd import Launch
    from trsplat.render.tiles import bin_splats

    seed, v, w, h, n_ch, kwargs = spec
    m, con, f, o, radii, depths, bg = (t.to(CUDA) for t in random_splats(seed, v, w, h, n_ch, **kwargs))
    bins = bin_splats(m, radii, depths, w, h)
    launch = Launch(CC.KERNELS, bins.grid_x, bins.grid_y, w, h)
    img, t_final, n_used = CC.KERNELS.run_forward(m, con, f, o, bg, bins.splat_ids,
                                                  bins.tile_offsets, launch)
    gen = torch.Generator().manual_seed(9)
    gi = torch.randn(img.shape, generator=gen).to(CUDA)
    ga = torch.randn(t_final.shape, generator=gen).to(CUDA)
    grads = torch.zeros(v, 6 + n_ch, device=CUDA)
    CC._launch(K.kernels(n_ch, warp_reduce).backward, bins.grid_x, bins.grid_y, m, con, o, f,
               bins.splat_ids, bins.tile_offsets, bins.grid_x, w, h, bg, t_final, n_used, gi, ga,
               grads)
    return grads


@gpu
def test_gpu_warp_reduction_equals_per_pixel_atomics():
    spec = GPU_COMPOSITOR[3]
    a = _kernel_grads(True, spec)
    b = _kernel_grads(False, spec)
    assert_rel_close(a, b, "warp-reduced vs per-pixel atomic gradients", rtol=1e-5)


@gpu
def test_gpu_gradients_agree_between_runs():
    """Float32 atomics: runs agree to rounding (not necessarily bitwise; documented)."""
    g, cam = _on(*make_scene(*GPU_SCENES[2]), CUDA)
    a = _grads(g, cam, "cuda", 0, CUDA)
    b = _grads(g, cam, "cuda", 0, CUDA)
    for name in PARAM_NAMES:
        assert_rel_close(a[name], b[name], f"run-to-run {name}", rtol=1e-5)


@gpu
def test_gpu_non_default_stream_and_cpu_inputs():
    g, cam = _on(*make_scene(*GPU_SCENES[2]), CUDA)
    ref = render(g, cam, backend="cuda", background=BG)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())  # inputs were made on the default stream
    with torch.cuda.stream(stream):
        gg = g.clone().requires_grad_()
        out = render(gg, cam, backend="cuda", background=BG)
        out.image.sum().backward()
    torch.cuda.synchronize()
    assert torch.equal(out.image, ref.image) and torch.equal(out.alpha, ref.alpha)
    assert torch.isfinite(gg.means.grad).all()
    # CPU inputs: computed on the GPU, returned on the CPU
    from trsplat.render.composite_cuda import composite_cuda
    from trsplat.render.tiles import bin_splats

    m, con, f, o, radii, depths, bg = random_splats(3, 200, 40, 30, 3)
    bins = bin_splats(m, radii, depths, 40, 30)
    mm = m.clone().requires_grad_()
    img, alpha = composite_cuda(mm, con, f, o, bins, 40, 30, bg)
    assert img.device.type == "cpu" and alpha.device.type == "cpu"
    assert_image_close(img, composite_reference(m, con, f, o, bins, 40, 30, bg)[0], "cpu-input image",
                       GPU_TOL)
    img.sum().backward()
    assert mm.grad is not None and mm.grad.device.type == "cpu"


@gpu
def test_gpu_half_precision_and_default_backend():
    from trsplat.render.backends import default_backend
    from trsplat.render.composite_cuda import composite_cuda
    from trsplat.render.tiles import bin_splats

    assert default_backend() == "cuda"
    m, con, f, o, radii, depths, bg = (t.to(CUDA) for t in random_splats(7, 200, 40, 30, 3))
    bins = bin_splats(m, radii, depths, 40, 30)
    img, _ = composite_cuda(m, con, f.half(), o, bins, 40, 30, bg)
    assert img.dtype == torch.float16
    want = composite_reference(m, con, f.half().float(), o, bins, 40, 30, bg)[0]
    assert (img.float() - want).abs().max() < 5e-3
