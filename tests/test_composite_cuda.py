"""What is specific to the numba-cuda ``cuda`` backend; its agreement with ``reference`` (on a
GPU, or in numba's CUDA simulator without one) is in ``tests/test_backend_conformance.py``.

* **No GPU** (run everywhere): a clear :class:`TrsplatError` without a GPU or without
  numba-cuda, ``import trsplat`` / the ``cpu`` backend without numba-cuda, and the real-GPU
  kernels compiled to PTX where NVVM is installed.
* **GPU** (``skipif(not torch.cuda.is_available())``): the GPU against the CPU oracle, warp
  reduction vs per-pixel atomics, run-to-run agreement of the (atomic, hence non-deterministic)
  gradients, non-default streams, CPU inputs, ``auto`` picking ``cuda``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import (BG, GPU_TOL, assert_image_close, assert_rel_close, make_scene,
                           random_splats, render_grads)
from trsplat.errors import TrsplatError
from trsplat.gaussians import PARAM_NAMES
from trsplat.render import render
from trsplat.render.composite_reference import composite_reference

ROOT = Path(__file__).resolve().parents[1]
HAS_GPU = torch.cuda.is_available()


def _has_numba_cuda() -> bool:
    import importlib.util

    return importlib.util.find_spec("numba_cuda") is not None


# == tests without a GPU =========================================================================
@pytest.mark.skipif(HAS_GPU or os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"),
                    reason="needs a machine without a GPU and without the simulator")
def test_no_gpu_raises_clear_error():
    from trsplat.render.backends import default_backend, get_backend

    with pytest.raises(TrsplatError, match="backend 'cuda' needs an NVIDIA GPU"):
        get_backend("cuda")
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
        backends.get_backend("cuda")
    assert backends.default_backend() in ("cpu", "reference")


def test_import_and_cpu_backend_without_numba_cuda():
    code = (
        "import sys; sys.modules['numba.cuda'] = None; sys.modules['numba_cuda'] = None\n"
        "import trsplat, torch\n"
        "from trsplat.render import render\n"
        "from trsplat.render.backends import default_backend, get_backend\n"
        "from trsplat.errors import TrsplatError\n"
        "from tests.helpers import make_scene\n"
        "g, cam = make_scene('ball', 0, 5, 20, 18)\n"
        "a = render(g, cam, backend=default_backend()).image\n"
        "b = render(g, cam, backend='reference').image\n"
        "assert (a - b).abs().max() < 1e-5\n"
        "try:\n"
        "    get_backend('cuda')\n"
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


# == GPU tests ===================================================================================
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA GPU")
CUDA = torch.device("cuda") if HAS_GPU else None
SCENE = ("ball", 2, 4000, 200, 120)
COMPOSITOR = (3, 2500, 80, 72, 7, dict(max_var=400.0, spread=20.0))


@gpu
def test_gpu_render_vs_cpu_reference():
    """The oracle on the CPU (float64-accumulated transmittance) vs the cuda backend."""
    g, cam = make_scene(*SCENE)
    ref = render(g, cam, backend="reference", background=BG)
    out = render(g.to(CUDA), cam.to(CUDA), backend="cuda", background=BG)
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
    a = _kernel_grads(True, COMPOSITOR)
    b = _kernel_grads(False, COMPOSITOR)
    assert_rel_close(a, b, "warp-reduced vs per-pixel atomic gradients", rtol=1e-5)


@gpu
def test_gpu_gradients_agree_between_runs():
    """Float32 atomics: runs agree to rounding (not necessarily bitwise; documented)."""
    g, cam = make_scene(*SCENE)
    g, cam = g.to(CUDA), cam.to(CUDA)
    a = render_grads(g, cam, "cuda", 0, CUDA)
    b = render_grads(g, cam, "cuda", 0, CUDA)
    for name in PARAM_NAMES:
        assert_rel_close(a[name], b[name], f"run-to-run {name}", rtol=1e-5)


@gpu
def test_gpu_non_default_stream_and_cpu_inputs():
    g, cam = make_scene(*SCENE)
    g, cam = g.to(CUDA), cam.to(CUDA)
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
def test_gpu_is_the_default_backend():
    from trsplat.render.backends import default_backend, get_backend

    assert default_backend() == "cuda" and get_backend("cuda").device().type == "cuda"
