"""Every registered backend against the pure-torch ``reference`` oracle.

For each backend of :data:`trsplat.render.backends.BACKENDS` except the oracle itself:
``render()`` images, alphas, depths, culling; every raw-parameter gradient (VJP) for random
cotangents; forward-mode tangents (JVP, the fused ``forward_ad`` path and ``torch.func.jvp``);
the trust-region optimizer's JVP-then-backward pattern; ``torch.func.vjp``/``grad``; the
compositor alone on random splats (background gradient and tangent, long tile lists, partial
tangents and gradients, non-contiguous inputs, half precision, the float64 fallback); empty
scenes; double backward and ``vmap`` raising.

The tiny cases (2x1 tiles, :data:`tests.helpers.TINY_SCENES`) run for every backend. Backends
that run natively also get the larger cases. Without a GPU the ``cuda`` backend runs the tiny
cases in numba's CUDA simulator: it must be enabled before ``numba.cuda`` is imported, so they
all run in ONE subprocess (:func:`_sim_main`, started by the ``sim_results`` fixture only when
a ``cuda`` case is collected) and each is reported as its own test.

Tolerances (float32): images ≤ 1e-5 + 1e-5·|ref| per value, gradients and tangents
≤ 1e-4·max|ref| per tensor (:mod:`tests.helpers`). On a real GPU a handful of values may flip a
skip/stop decision that sits within an ulp of its threshold (``expf``, FMA, float32
transmittance); :data:`tests.helpers.GPU_TOL` allows a few such outliers within a loose bound.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, NamedTuple

import pytest
import torch
import torch.autograd.forward_ad as fwAD

from tests.helpers import (BG, GPU_TOL, SCENES, STRICT, TINY_SCENES, assert_image_close,
                           assert_rel_close, cotangents, make_scene, random_splats, render_grads,
                           scene_id, tangents)
from trsplat.errors import TrsplatError
from trsplat.gaussians import PARAM_NAMES, Gaussians
from trsplat.render import render
from trsplat.render.backends import BACKENDS, REGISTRY, default_backend, get_backend, resolve_backend
from trsplat.render.composite_reference import composite_reference
from trsplat.render.project import project
from trsplat.render.tiles import bin_splats

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]
ORACLE = "reference"
NATIVE = [b for b in BACKENDS if b != ORACLE]
HAS_GPU = torch.cuda.is_available()


# == checks: each runs one comparison for ``backend`` on ``device`` and raises AssertionError ======
def _on(scene, device):
    g, cam = make_scene(*scene)
    return g.to(device), cam.to(device)


def check_forward(backend, scene, device, tol):
    g, cam = _on(scene, device)
    out = render(g, cam, backend=backend, background=BG)
    ref = render(g, cam, backend=ORACLE, background=BG)
    assert out.image.dtype == torch.float32 and out.image.shape == (cam.height, cam.width, 3)
    assert out.image.device == g.means.device
    for name in ("image", "alpha", "depth"):
        assert_image_close(getattr(out, name), getattr(ref, name), name, tol)
    assert torch.equal(out.visible, ref.visible) and torch.equal(out.radii, ref.radii)


def check_gradients(backend, scene, device, tol):
    g, cam = _on(scene, device)
    got = render_grads(g, cam, backend, scene[1], device)
    want = render_grads(g, cam, ORACLE, scene[1], device)
    for name in PARAM_NAMES:
        assert_rel_close(got[name], want[name], f"grad {name}", tol)


def _jvp(g, cam, backend, seed, device):
    tans = tangents(g, seed, device)
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tans[k]) for k, v in g.params().items()})
        out = render(gd, cam, backend=backend, background=BG)
        return [fwAD.unpack_dual(t) for t in (out.image, out.alpha, out.depth)]


def check_forward_ad(backend, scene, device, tol):
    g, cam = _on(scene, device)
    got = _jvp(g, cam, backend, scene[1], device)
    want = _jvp(g, cam, ORACLE, scene[1], device)
    for name, a, b in zip(("image", "alpha", "depth"), got, want):
        assert_image_close(a.primal, b.primal, f"{name} primal", tol)
        assert_rel_close(a.tangent, b.tangent, f"{name} tangent", tol)


def _jvp_then_backward(g, cam, backend, seed, device):
    """The trust-region estimator's pattern: a JVP render, then reverse mode through it."""
    tans = tangents(g, seed, device)
    gen = torch.Generator().manual_seed(3000 + seed)
    target = torch.rand(cam.height, cam.width, 3, generator=gen).to(device)
    gg = g.clone().requires_grad_()
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tans[k]) for k, v in gg.params().items()})
        out = render(gd, cam, backend=backend)
        primal, tangent = fwAD.unpack_dual(out.image - target)
        primal.backward(tangent.detach())
    return tangent.detach(), {k: v.grad for k, v in gg.params().items()}


def check_jvp_then_backward(backend, scene, device, tol):
    g, cam = _on(scene, device)
    t_got, g_got = _jvp_then_backward(g, cam, backend, scene[1], device)
    t_ref, g_ref = _jvp_then_backward(g, cam, ORACLE, scene[1], device)
    assert_rel_close(t_got, t_ref, "residual tangent", tol)
    for name in PARAM_NAMES:
        assert_rel_close(g_got[name], g_ref[name], f"JᵀJv {name}", tol)


def check_torch_func(backend, scene, device, tol):
    g, cam = _on(scene, device)
    params = g.params()
    tans = tangents(g, 0, device)
    ci, _, _ = cotangents(cam, 0, device)

    def image_fn(name):
        return lambda p: render(Gaussians.from_params(p), cam, backend=name).image

    prim_c, tan_c = torch.func.jvp(image_fn(backend), (params,), (tans,))
    prim_r, tan_r = torch.func.jvp(image_fn(ORACLE), (params,), (tans,))
    assert_image_close(prim_c, prim_r, "func.jvp primal", tol)
    assert_rel_close(tan_c, tan_r, "func.jvp tangent", tol)
    gc = torch.func.vjp(image_fn(backend), params)[1](ci)[0]
    gr = torch.func.vjp(image_fn(ORACLE), params)[1](ci)[0]
    grad = torch.func.grad(lambda p: (image_fn(backend)(p) * ci).sum())(params)
    for name in PARAM_NAMES:
        assert_rel_close(gc[name], gr[name], f"func.vjp {name}", tol)
        assert_rel_close(grad[name], gr[name], f"func.grad {name}", tol)


def check_compositor(backend, spec, device, tol):
    """Random splats with ``n_ch`` channels: image, alpha, every input's gradient (background
    included) and tangent (background tangent included)."""
    composite = REGISTRY[backend].composite
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
    img, alpha = composite(*ins[:4], bins, width, height, ins[4])
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
    tans = [torch.randn(t.shape, generator=gen).to(device) for t in (m, con, f, o, bg)]
    outs = []
    for fn in (composite, composite_reference):
        with fwAD.dual_level():
            d = [fwAD.make_dual(t, dt) for t, dt in zip((m, con, f, o, bg), tans)]
            res = fn(d[0], d[1], d[2], d[3], bins, width, height, d[4])
            outs.append([fwAD.unpack_dual(r) for r in res])
    for i, name in enumerate(("image", "alpha")):
        assert_image_close(outs[0][i].primal, outs[1][i].primal, f"{name} primal (JVP)", tol)
        assert_rel_close(outs[0][i].tangent, outs[1][i].tangent, f"{name} tangent", tol)


def check_partial_inputs(backend, _, device, tol):
    """Only some inputs dual / requiring grad, an unused output, non-contiguous inputs."""
    composite = REGISTRY[backend].composite
    w, h = 16, 12  # one tile
    m, con, f, o, radii, depths, bg = (t.to(device) for t in random_splats(5, 20, w, h, 3))
    bins = bin_splats(m, radii, depths, w, h)
    f_nc = torch.stack([f, f], dim=2)[:, :, 0]
    assert not f_nc.is_contiguous()
    ref = composite_reference(m, con, f, o, bins, w, h, bg)
    got = composite(m, con, f_nc, o, bins, w, h, bg)
    assert_image_close(got[0], ref[0], "image (non-contiguous features)", tol)
    tan = torch.randn_like(o)
    res = []
    for fn in (composite, composite_reference):
        with fwAD.dual_level():
            img, _ = fn(m, con, f, fwAD.make_dual(o, tan), bins, w, h, bg)
            res.append(fwAD.unpack_dual(img).tangent)
    assert_rel_close(res[0], res[1], "image tangent (opacity only)", tol)
    mm, mr = m.clone().requires_grad_(), m.clone().requires_grad_()
    composite(mm, con, f, o, bins, w, h, bg)[1].sum().backward()  # image unused
    composite_reference(mr, con, f, o, bins, w, h, bg)[1].sum().backward()
    assert_rel_close(mm.grad, mr.grad, "means2d grad from alpha only", tol)


def check_half_precision(backend, _, device, tol):
    """float16 features are computed in float32 and returned as float16."""
    composite = REGISTRY[backend].composite
    m, con, f, o, radii, depths, bg = (t.to(device) for t in random_splats(7, 20, 24, 12, 3))
    bins = bin_splats(m, radii, depths, 24, 12)
    img, _ = composite(m, con, f.half(), o, bins, 24, 12, bg)
    assert img.dtype == torch.float16
    want = composite_reference(m, con, f.half().float(), o, bins, 24, 12, bg)[0]
    assert float((img.float() - want).abs().max()) < 5e-3


def check_empty(backend, _, device, tol):
    g, cam = _on(("ball", 11, 6, 24, 12), device)
    g.means[:, 2] = -10.0  # everything behind the camera: no tile lists at all
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend=backend, background=(0.1, 0.2, 0.3))
    assert torch.equal(out.image.cpu(), torch.tensor([0.1, 0.2, 0.3]).expand(12, 24, 3))
    assert torch.equal(out.alpha.cpu(), torch.zeros(12, 24))
    out.image.sum().backward()
    assert all(v.grad is None or not bool(v.grad.any()) for v in gg.params().values())


def check_unsupported_raise(backend, _, device, tol):
    g, cam = _on(("ball", 1, 6, 24, 12), device)
    gg = g.clone().requires_grad_()
    out = render(gg, cam, backend=backend)
    (grad,) = torch.autograd.grad(out.image.sum(), gg.means, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        grad.sum().backward()
    composite = REGISTRY[backend].composite
    m, con, f, o, radii, depths, bg = (t.to(device) for t in random_splats(4, 10, 24, 12, 3))
    bins = bin_splats(m, radii, depths, 24, 12)
    with pytest.raises(NotImplementedError, match="vmap"):
        torch.func.vmap(lambda ff: composite(m, con, ff, o, bins, 24, 12, bg)[0])(torch.stack([f, f]))


class Case(NamedTuple):
    name: str
    check: Callable
    arg: object
    where: str  # "all" backends, "native" ones (not simulated), or "gpu" (a real GPU) only


# Compositor specs (seed, V, W, H, C, random_splats kwargs + min_list / min_alpha).
TINY_COMPOSITOR = [
    (0, 12, 24, 12, 3, {}),
    # 300 faint wide splats over one tile (16x4 pixels, to keep the simulator fast): > 256
    # entries, two batches of a GPU block, no early stop
    (1, 300, 16, 4, 2, dict(opacity=(0.005, 0.015), max_var=2000.0, spread=0.0, min_list=300)),
    # 300 opaque wide splats: every pixel stops after a few, a GPU block exits before batch 2
    (2, 300, 16, 16, 1, dict(opacity=(0.97, 0.999), min_var=200.0, max_var=4000.0, spread=0.0,
                             min_list=300, min_alpha=0.98)),
]
COMPOSITOR = [
    (0, 1, 17, 9, 1, dict(max_var=400.0, spread=20.0)),
    (1, 50, 37, 23, 3, dict(max_var=400.0, spread=20.0)),
    (2, 800, 129, 65, 4, dict(max_var=400.0, spread=20.0)),
    (3, 2500, 80, 72, 7, dict(max_var=400.0, spread=20.0)),
    # long lists (no per-tile cap) without early stop, and opaque ones with early stop
    (4, 3000, 32, 32, 4, dict(opacity=(0.004, 0.006), max_var=4000.0, spread=0.0, min_list=2900)),
    (5, 3000, 32, 32, 4, dict(opacity=(0.9, 0.999), min_var=200.0, max_var=4000.0, spread=0.0,
                              min_list=2900, min_alpha=0.98)),
]


def _comp_id(spec) -> str:
    return f"{spec[0]}-{spec[1]}-{spec[2]}x{spec[3]}-c{spec[4]}"


GPU_SCENE = ("ball", 12, 50_000, 640, 480)


def _cases() -> list[Case]:
    cases = []
    for where, scenes, comps in (("all", TINY_SCENES, TINY_COMPOSITOR),
                                 ("native", SCENES, COMPOSITOR), ("gpu", [GPU_SCENE], [])):
        for s in scenes:
            for check in (check_forward, check_gradients, check_forward_ad):
                cases.append(Case(f"{check.__name__[6:]}[{scene_id(s)}]", check, s, where))
        cases += [Case(f"compositor[{_comp_id(c)}]", check_compositor, c, where) for c in comps]
    for s in (TINY_SCENES[2], SCENES[2], SCENES[3], SCENES[7]):
        where = "all" if s in TINY_SCENES else "native"
        cases.append(Case(f"jvp_then_backward[{scene_id(s)}]", check_jvp_then_backward, s, where))
    for s in (TINY_SCENES[0], SCENES[3]):
        where = "all" if s in TINY_SCENES else "native"
        cases.append(Case(f"torch_func[{scene_id(s)}]", check_torch_func, s, where))
    for check in (check_partial_inputs, check_half_precision, check_empty, check_unsupported_raise):
        cases.append(Case(check.__name__[6:], check, None, "all"))
    return cases


CASES = _cases()


# == running the cases ===============================================================================
def _simulated(backend: str) -> bool:
    return backend == "cuda" and not HAS_GPU


def _run(backend: str, case: Case) -> None:
    device = get_backend(backend).device()
    tol = GPU_TOL if backend == "cuda" and HAS_GPU else STRICT
    case.check(backend, case.arg, device, tol)


def _sim_main() -> None:
    """Entry point of the simulator subprocess: run every tiny case for ``cuda``, print JSON."""
    import time
    import traceback

    from trsplat.render.composite_cuda import simulator_enabled

    assert simulator_enabled(), "run with NUMBA_ENABLE_CUDASIM=1"
    torch.set_num_threads(1)
    results = {}
    for case in CASES:
        if case.where != "all":
            continue
        t0 = time.perf_counter()
        try:
            _run("cuda", case)
            results[case.name] = {"ok": True}
        except Exception as e:  # noqa: BLE001 (reported to the parent test)
            results[case.name] = {"ok": False, "error": f"{type(e).__name__}: {e}",
                                  "traceback": traceback.format_exc()[-3000:]}
        results[case.name]["seconds"] = round(time.perf_counter() - t0, 2)
    print("SIMRESULTS " + json.dumps(results))


@pytest.fixture(scope="module")
def sim_results():
    if importlib.util.find_spec("numba_cuda") is None:
        pytest.skip("numba-cuda is not installed")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(ROOT) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run(
        [sys.executable, "-c", "from tests.test_backend_conformance import _sim_main; _sim_main()"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("SIMRESULTS ")]
    assert proc.returncode == 0 and lines, f"simulator subprocess failed:\n{proc.stderr[-4000:]}"
    return json.loads(lines[-1][len("SIMRESULTS "):])


PAIRS = [(b, c) for b in NATIVE for c in CASES if c.where != "gpu" or b == "cuda"]


@pytest.mark.parametrize("backend,case", PAIRS, ids=[f"{b}-{c.name}" for b, c in PAIRS])
def test_matches_reference(backend, case, request):
    if case.where == "gpu" and not HAS_GPU:
        pytest.skip("a GPU-sized case")
    if _simulated(backend) and case.where != "all":
        pytest.skip("needs a GPU (the simulator runs the tiny cases only)")
    if _simulated(backend) and os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        res = request.getfixturevalue("sim_results")[case.name]
        assert res["ok"], f"{res['error']}\n{res['traceback']}"
        return
    reason = REGISTRY[backend].unavailable()
    if reason is not None:
        pytest.skip(reason)
    _run(backend, case)


@pytest.mark.parametrize("backend", NATIVE)
def test_float64_falls_back_to_reference(backend):
    """float64 goes to the reference compositor, bit for bit (no kernels, so no GPU needed)."""
    m, con, f, o, radii, depths, bg = random_splats(6, 40, 40, 30, 3)
    bins = bin_splats(m, radii, depths, 40, 30)
    args = [t.double() for t in (m, con, f, o)]
    got = REGISTRY[backend].composite(*args, bins, 40, 30, bg.double())
    want = composite_reference(*args, bins, 40, 30, bg.double())
    assert got[0].dtype == torch.float64
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


# == the registry and the test scenes ================================================================
def test_registry():
    assert set(BACKENDS) == set(REGISTRY) == {"reference", "cpu", "cuda"}
    assert default_backend() in BACKENDS and resolve_backend("auto") == default_backend()
    assert resolve_backend("cpu") == "cpu"
    with pytest.raises(TrsplatError, match="unknown backend"):
        resolve_backend("opengl")
    with pytest.raises(TrsplatError, match="unknown backend"):
        get_backend("auto")
    for name, b in REGISTRY.items():
        assert b.name == name
        if b.unavailable() is None:
            assert get_backend(name) is b and isinstance(b.device(), torch.device)


def test_cases_exercise_the_edge_cases():
    """The tiny scenes hold what the suite claims: empty tiles, splats at the 1/255 threshold,
    elongated splats, the T < 1e-4 stop, culled splats (long tile lists: ``min_list`` in
    :func:`check_compositor`)."""
    empty_tile = faint = elongated = stop = culled = False
    for scene in TINY_SCENES:
        g, cam = make_scene(*scene)
        with torch.no_grad():
            p = project(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest, cam, 3)
            bins = bin_splats(p.means2d, p.radii, p.depths, cam.width, cam.height)
            out = render(g, cam)
        counts = bins.tile_offsets[1:] - bins.tile_offsets[:-1]
        empty_tile |= bool((counts == 0).any()) and bool((counts > 0).any())
        faint |= bool(((p.opacities * 255 - 1).abs() < 0.05).any())
        a, b, c = p.conics.unbind(1)  # eigenvalue ratio of the conic = squared axis ratio
        disc = torch.sqrt((a - c) ** 2 + 4 * b * b)
        elongated |= bool((((a + c + disc) / (a + c - disc)) > 25).any())
        stop |= float(out.alpha.max()) > 0.999
        culled |= int(out.visible.sum()) < len(g)
    assert empty_tile and faint and elongated and stop and culled
