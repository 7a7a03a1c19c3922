"""``trsplat bench render``: time forward, backward (VJP) and forward-mode JVP of ``render()``.

For each case (a scene size) and each backend it measures, on the full :func:`trsplat.render.render`
(projection + SH + binning + compositing):

* ``forward_s``: ``render()`` with parameters that require grad (the autograd graph is built);
* ``backward_s``: ``(image · cotangent).sum().backward()`` after that forward;
* ``jvp_s``: ``render()`` under ``torch.autograd.forward_ad.dual_level()`` with a random tangent
  on every raw parameter (primal + tangent);

each the median of ``repeats`` runs after a warm-up run. Every (case, backend) runs in its own
Python process, so ``peak_rss_bytes`` (VmHWM) is that case's peak and nothing is shared between
cases. The numba JIT compile time of the ``cpu`` kernels is measured separately, in a process
with an empty numba cache (``compile_s.cold``) and with the on-disk cache (``compile_s.cached``).

The reference backend is skipped where its estimated time for one forward + backward + JVP
(padded (pixel, splat) pairs × a calibrated cost per pair) exceeds ``max_reference_s``, or its
estimated peak memory (the autograd graph keeps every (pixel, splat) intermediate, ~70 bytes a
pair) exceeds 60% of the RAM; the case then has ``"skipped": "<reason>"`` and null timings. Where one reference iteration takes more
than 30 s, only 2 timed repeats are made.

The machine is described in ``machine``; each case also records the load average and, on Linux,
the CPU pressure (``/proc/pressure/cpu``) before and after it, because timings on a shared
machine are only comparable when nothing else runs.

Scenes are synthetic and trained-looking: Gaussians uniformly in a ball in front of the camera,
anisotropic log-normal scales whose median projected standard deviation is ~1.5 px (a splat
covers tens of pixels), random rotations, bimodal random opacities and SH colours of degree 3.
One real camera is taken from ``nerf_synthetic_chair`` (frame 0 of ``transforms_train.json``, or
of ``transforms_test.json`` when the training file is absent) with 100k random Gaussians in the
±1.3 cube, scaled like the 3DGS initialisation (3-nearest-neighbour distance).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from trsplat.bench.datasets import default_capture
from trsplat.machine import machine_info, memory_bytes
from trsplat.process_tuning import tune_process

DEFAULT_DATA = default_capture()  # $TRSPLAT_DATA/nerf_synthetic_chair

# Cost per padded (pixel, splat) pair of the reference compositor for forward + backward + JVP
# of one render (~8 s for 1.0e8 pairs at N=100k, 400x400 on an idle 2-core AMD EPYC, several
# times more on a busy one), and its peak memory with autograd (~68 bytes per pair: 6.8 GB at
# N=100k, 400x400). Only used to decide whether to skip a reference case.
REFERENCE_S_PER_PAIR = 1.0e-7
REFERENCE_BYTES_PER_PAIR = 70.0
REFERENCE_MAX_MEMORY_FRACTION = 0.6


@dataclass
class BenchCase:
    """One benchmark scene: ``kind`` is "synthetic" or "chair"."""

    name: str
    n_gaussians: int
    width: int
    height: int
    kind: str = "synthetic"
    seed: int = 0


DEFAULT_CASES = (
    BenchCase("synthetic-10k-200", 10_000, 200, 200),
    BenchCase("synthetic-100k-400", 100_000, 400, 400),
    BenchCase("synthetic-300k-800", 300_000, 800, 800),
    BenchCase("chair-100k-800", 100_000, 800, 800, kind="chair"),
)


# -- scenes -------------------------------------------------------------------------------------
def _random_appearance(n: int, gen, log_scale_median: "torch.Tensor | float"):
    import torch

    from trsplat.gaussians import Gaussians

    log_scales = log_scale_median + 0.5 * torch.randn(n, 1, generator=gen) + 0.3 * torch.randn(n, 3, generator=gen)
    # bimodal opacities, like a trained 3DGS scene (many nearly transparent, many nearly opaque)
    logits = torch.where(torch.rand(n, generator=gen) < 0.5,
                         -2.0 + 1.5 * torch.randn(n, generator=gen),
                         2.5 + 1.5 * torch.randn(n, generator=gen))
    return Gaussians(
        means=torch.zeros(n, 3),
        log_scales=log_scales,
        quats=torch.randn(n, 4, generator=gen),
        opacity_logits=logits,
        sh_dc=0.8 * torch.randn(n, 1, 3, generator=gen),
        sh_rest=0.05 * torch.randn(n, 15, 3, generator=gen),
    )


def synthetic_scene(n: int, width: int, height: int, seed: int = 0, sigma_px: float = 1.5):
    """``n`` Gaussians in the unit ball, seen from distance 3 with a 50° horizontal field of view.

    Median projected standard deviation ``sigma_px`` pixels. Returns (Gaussians, Camera).
    """
    import torch

    from trsplat.camera import Camera, look_at

    gen = torch.Generator().manual_seed(seed)
    dirs = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    radius = torch.rand(n, 1, generator=gen) ** (1.0 / 3.0)
    means = dirs * radius
    dist = 3.0
    fx = 0.5 * width / math.tan(math.radians(25.0))
    scale = sigma_px * dist / fx
    g = _random_appearance(n, gen, math.log(scale))
    g.means = means
    w2c = look_at(torch.tensor([0.0, 0.0, -dist]), torch.zeros(3), torch.tensor([0.0, -1.0, 0.0]))
    cam = Camera(width, height, fx, fx, width / 2.0, height / 2.0, w2c, name="synthetic")
    return g, cam


def chair_camera(data_dir: str | os.PathLike = DEFAULT_DATA, size: int = 800):
    """Frame 0 of the Blender capture in ``data_dir`` as a :class:`Camera`, or None if absent.

    Returns (camera, source file name).
    """
    import numpy as np
    import torch

    from trsplat.camera import Camera

    data_dir = Path(data_dir)
    for name in ("transforms_train.json", "transforms_test.json"):
        path = data_dir / name
        if path.is_file():
            break
    else:
        return None
    meta = json.loads(path.read_text())
    frame = meta["frames"][0]
    c2w = np.array(frame["transform_matrix"], dtype=np.float64)
    c2w[:3, 1:3] *= -1.0  # OpenGL (x right, y up, z back) -> OpenCV (x right, y down, z forward)
    w2c = np.linalg.inv(c2w)
    width = height = int(size)  # the captures are 800x800; smaller sizes are downscales
    fx = 0.5 * width / math.tan(0.5 * float(meta["camera_angle_x"]))
    cam = Camera(width, height, fx, fx, width / 2.0, height / 2.0,
                 torch.from_numpy(w2c).float(), name=f"{data_dir.name}/{frame['file_path']}")
    return cam, name


def chair_scene(n: int, seed: int = 0, data_dir: str | os.PathLike = DEFAULT_DATA, size: int = 800):
    """``n`` random Gaussians in the ±1.3 cube seen from the chair's frame 0 (size x size), or None."""
    import torch

    from trsplat.gaussians import mean_knn_distance

    found = chair_camera(data_dir, size)
    if found is None:
        return None
    cam, _ = found
    gen = torch.Generator().manual_seed(seed)
    means = (torch.rand(n, 3, generator=gen) * 2.0 - 1.0) * 1.3
    log_knn = torch.log(mean_knn_distance(means))
    g = _random_appearance(n, gen, log_knn[:, None] - 0.5)
    g.means = means
    return g, cam


def make_scene(case: BenchCase, data_dir=DEFAULT_DATA):
    if case.kind == "synthetic":
        return synthetic_scene(case.n_gaussians, case.width, case.height, case.seed)
    if case.kind == "chair":
        return chair_scene(case.n_gaussians, case.seed, data_dir, case.width)
    raise ValueError(f"unknown bench case kind {case.kind!r}")


def _rss(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# -- measurement ----------------------------------------------------------------------------------
def _median_time(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def reference_padded_pairs(bins) -> int:
    """(pixel, splat) pairs the reference compositor evaluates, with its batching and padding."""
    counts = (bins.tile_offsets[1:] - bins.tile_offsets[:-1]).sort(descending=True).values
    counts = counts[counts > 0].tolist()
    max_pairs, pix = 1 << 22, 256
    total, start = 0, 0
    while start < len(counts):
        k_max = counts[start]
        n_batch = max(1, min(len(counts) - start, max_pairs // (pix * k_max)))
        total += n_batch * pix * k_max
        start += n_batch
    return total


def _load() -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        out["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    try:
        out["cpu_pressure_some_avg10"] = float(
            Path("/proc/pressure/cpu").read_text().split()[1].split("=")[1])
    except (OSError, IndexError, ValueError):
        pass
    return out


# -- kernel-level pairs and the roofline probe -----------------------------------------------------
def _probe_kernel():
    """The roofline probe (numba, compiled on first use): a plain blend loop with no culling.

    For every tile and every entry of its splat list it evaluates all 256 pixels: the float32
    power, ``exp32``, α = min(0.99, o·exp), the α ≥ 1/255 test, the float64 transmittance
    update (one vectorizable loop over the 256 pixels) and the float64 colour accumulation (one
    per channel); no pixel boxes, row spans, early stop or 4-lane bookkeeping. Its (pixel, splat) pairs per second
    is the rate of the blending arithmetic itself on this machine, the yardstick for the
    kernels' pairs per second. Returns the image (not the compositor's: no T < 1e-4 stop).
    """
    import numba
    import numpy as np
    from numba import njit, prange

    from trsplat.render import cpu_kernels as K

    @njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
    def probe(gdata, splat_ids, tile_offsets, grid_x, grid_y, width, height, image):
        n_ch = gdata.shape[1] - K.N_GEOM
        for tile in prange(grid_x * grid_y):
            x0 = (tile % grid_x) * K.TILE
            y0 = (tile // grid_x) * K.TILE
            trans = np.ones(K.TILE_PIX, dtype=np.float64)
            acc = np.zeros((n_ch, K.TILE_PIX), dtype=np.float64)
            fx = np.empty(K.TILE_PIX, dtype=np.float32)
            fy = np.empty(K.TILE_PIX, dtype=np.float32)
            wk = np.empty(K.TILE_PIX, dtype=np.float32)
            for q in range(K.TILE_PIX):
                fx[q] = np.float32(x0 + q % K.TILE)
                fy[q] = np.float32(y0 + q // K.TILE)
            for j in range(tile_offsets[tile], tile_offsets[tile + 1]):
                g = splat_ids[j]
                mx = gdata[g, 0]
                my = gdata[g, 1]
                a = gdata[g, 2]
                b = gdata[g, 3]
                c = gdata[g, 4]
                o = gdata[g, 5]
                for q in range(np.uint64(0), np.uint64(K.TILE_PIX)):
                    dx = mx - fx[q]
                    dy = my - fy[q]
                    power = -K.HALF * (a * dx * dx + c * dy * dy) - b * dx * dy
                    pc = power if power >= K.EXP_LO else K.EXP_LO
                    pc = pc if pc <= K.ZERO else K.ZERO
                    alpha = o * K.exp32(pc)
                    alpha = K.ALPHA_MAX if alpha > K.ALPHA_MAX else alpha
                    use = (power <= K.ZERO) & (alpha >= K.ALPHA_MIN)
                    t_old = trans[q]
                    wk[q] = alpha * np.float32(t_old) if use else K.ZERO
                    trans[q] = t_old * np.float64(K.ONE - alpha) if use else t_old + 0.0
                for ch in range(n_ch):
                    f = gdata[g, K.N_GEOM + ch]
                    for q in range(np.uint64(0), np.uint64(K.TILE_PIX)):
                        acc[ch, q] = acc[ch, q] + np.float64(f * wk[q])
            for q in range(K.TILE_PIX):
                px = x0 + q % K.TILE
                py = y0 + q // K.TILE
                if px < width and py < height:
                    for ch in range(n_ch):
                        image[py, px, ch] = np.float32(acc[ch, q])

    return probe


_PROBE = None


def run_probe(gdata, splat_ids, tile_offsets, grid_x: int, grid_y: int, width: int, height: int):
    """Run the roofline probe (:func:`_probe_kernel`) once; returns the pairs it evaluated."""
    import numpy as np

    from trsplat.render import cpu_kernels as K

    global _PROBE
    if _PROBE is None:
        _PROBE = _probe_kernel()
    image = np.empty((height, width, gdata.shape[1] - K.N_GEOM), dtype=np.float32)
    K.run_parallel(_PROBE, gdata, splat_ids, tile_offsets, grid_x, grid_y, width, height, image)
    return K.TILE_PIX * int(splat_ids.shape[0])


def measure_kernels(proj, bins, width: int, height: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    """Kernel-level timings of the ``cpu`` compositor on one view (no autograd, no glue).

    For forward, VJP and JVP: seconds (median of ``repeats``), the (pixel, splat) pairs the kernel
    evaluated (its 4-lane row spans; ``cpu_kernels.STAT_PAIRS``), pairs per second, and that rate
    as a fraction of the roofline probe's (:func:`run_probe`, 256 pairs per tile-list entry). The
    VJP includes the per-splat reduction of its entry rows.
    """
    import numpy as np
    import torch

    from trsplat.render import cpu_kernels as K
    from trsplat.render.composite_cpu import _boxes, _pack

    with torch.no_grad():
        features = torch.cat([proj.colors, proj.depths[:, None]], dim=1)
        gdata = _pack(proj.means2d, proj.conics, proj.opacities, features)
    boxes = _boxes(gdata, width, height)
    sid = bins.splat_ids.numpy()
    off = bins.tile_offsets.numpy()
    gx, gy = bins.grid_x, bins.grid_y
    bg = np.array([1.0, 1.0, 1.0, 0.0], dtype=np.float32)
    rng = np.random.default_rng(seed)
    tdata = rng.standard_normal(gdata.shape).astype(np.float32)
    g_img = rng.standard_normal((height, width, 4)).astype(np.float32)
    g_alpha = rng.standard_normal((height, width)).astype(np.float32)
    image = np.empty((height, width, 4), np.float32)
    t_final = np.empty((height, width), np.float64)
    n_used = np.empty((height, width), np.int32)
    stats = np.zeros((gx * gy, K.N_STATS), np.int64)

    def fwd():
        K.run_parallel(K.forward_kernel, gdata, boxes, sid, off, gx, gy, width, height, bg,
                       image, t_final, n_used, stats)

    fwd()
    tf, nu = t_final.copy(), n_used.copy()

    def vjp():
        ent = np.empty((sid.shape[0], gdata.shape[1]), np.float32)
        K.run_parallel(K.backward_kernel, gdata, boxes, sid, off, gx, gy, width, height, bg, tf,
                       nu, g_img, g_alpha, ent, stats)
        K.reduce_entries(sid, ent, gdata.shape[0], max(1, K.numba.get_num_threads()))

    def jvp():
        K.run_parallel(K.jvp_kernel, gdata, tdata, boxes, sid, off, gx, gy, width, height, bg,
                       image.copy(), t_final.copy(), n_used.copy(), image.copy(),
                       np.empty((height, width), np.float32), stats)

    out: dict[str, Any] = {"entries": int(sid.shape[0])}
    for name, fn in (("forward", fwd), ("vjp", vjp), ("jvp", jvp)):
        fn()
        pairs = int(stats[:, K.STAT_PAIRS].sum())
        t, _ = _median_time(fn, repeats)
        out[name] = {"s": t, "pairs": pairs, "pairs_per_s": pairs / t,
                     "entries_visited": int(stats[:, K.STAT_ENTRIES].sum())}
    n_pairs = run_probe(gdata, sid, off, gx, gy, width, height)
    t, _ = _median_time(lambda: run_probe(gdata, sid, off, gx, gy, width, height), repeats)
    out["probe"] = {"s": t, "pairs": n_pairs, "pairs_per_s": n_pairs / t}
    for name in ("forward", "vjp", "jvp"):
        out[name]["fraction_of_probe"] = out[name]["pairs_per_s"] / out["probe"]["pairs_per_s"]
    return out



def measure_case(case: BenchCase, backend: str, repeats: int = 5, max_reference_s: float = 150.0,
                 data_dir=DEFAULT_DATA) -> dict[str, Any]:
    """Time one (case, backend) in this process. See the module docstring for the fields."""
    import torch
    import torch.autograd.forward_ad as fwAD

    from trsplat.gaussians import Gaussians
    from trsplat.render import render
    from trsplat.render.backends import get_compositor, get_projector
    from trsplat.render.tiles import bin_splats

    project_fn = get_projector(backend)
    compositor = backend
    result: dict[str, Any] = {
        "case": case.name, "backend": backend, "n_gaussians": case.n_gaussians,
        "width": case.width, "height": case.height, "kind": case.kind,
        "forward_s": None, "backward_s": None, "jvp_s": None, "peak_rss_bytes": None,
    }
    scene = make_scene(case, data_dir)
    if scene is None:
        result["skipped"] = f"data not found: {data_dir}"
        return result
    g, cam = scene
    if case.kind == "chair":
        result["camera"] = cam.name
        result["camera_file"] = chair_camera(data_dir, case.width)[1]
    torch.manual_seed(case.seed + 1)
    cot = torch.randn(cam.height, cam.width, 3)
    tangents = {k: torch.randn_like(v) for k, v in g.params().items()}

    with torch.no_grad():
        t0 = time.perf_counter()
        proj = project_fn(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest, cam, 3)
        t1 = time.perf_counter()
        bins = bin_splats(proj.means2d, proj.radii, proj.depths, cam.width, cam.height,
                          proj.conics, proj.opacities)
        t2 = time.perf_counter()
    result["n_visible"] = int(proj.ids.numel())
    result["n_intersections"] = int(bins.splat_ids.numel())
    pairs = reference_padded_pairs(bins)
    if backend == "reference":
        est = pairs * REFERENCE_S_PER_PAIR
        mem = pairs * REFERENCE_BYTES_PER_PAIR
        total = memory_bytes()
        result["reference_estimated_s_per_iteration"] = est
        result["reference_estimated_peak_bytes"] = mem
        reasons = []
        if est > max_reference_s:
            reasons.append(f"estimated {est:.0f} s per forward+backward+JVP > "
                           f"max_reference_s={max_reference_s:.0f}")
        if total and mem > REFERENCE_MAX_MEMORY_FRACTION * total:
            reasons.append(f"estimated peak memory {mem / 2**30:.0f} GiB > "
                           f"{REFERENCE_MAX_MEMORY_FRACTION:.0%} of {total / 2**30:.0f} GiB RAM")
        if reasons:
            result["skipped"] = "reference skipped: " + "; ".join(reasons)
            result["peak_rss_bytes"] = _rss("VmHWM")
            return result
    rss_scene = _rss("VmRSS")
    result["load_before"] = _load()

    g_req = g.clone().requires_grad_()
    state: dict[str, Any] = {}

    def fwd():
        state["out"] = render(g_req, cam, backend=compositor)

    def bwd():
        for v in g_req.params().values():
            v.grad = None
        (state.pop("out").image * cot).sum().backward()

    def jvp():
        with fwAD.dual_level():
            gd = Gaussians.from_params({k: fwAD.make_dual(v, tangents[k]) for k, v in g.params().items()})
            out = render(gd, cam, backend=compositor)
            state["tangent"] = fwAD.unpack_dual(out.image).tangent

    def fwd_bwd():
        fwd()
        bwd()

    # warm-up (loads the JIT cache, allocator), then timed runs
    t0w = time.perf_counter()
    fwd_bwd()
    jvp()
    warm = time.perf_counter() - t0w
    result["warmup_s"] = warm
    reps = repeats if (backend != "reference" or warm < 30.0) else max(1, min(repeats, 2))
    result["repeats"] = reps
    f_times, b_times = [], []
    for _ in range(reps):
        ta = time.perf_counter()
        fwd()
        tb = time.perf_counter()
        bwd()
        tc = time.perf_counter()
        f_times.append(tb - ta)
        b_times.append(tc - tb)
    result["forward_s"] = statistics.median(f_times)
    result["backward_s"] = statistics.median(b_times)
    result["jvp_s"], j_times = _median_time(jvp, reps)
    result["forward_min_s"], result["backward_min_s"], result["jvp_min_s"] = (
        min(f_times), min(b_times), min(j_times))
    result["forward_backward_s"] = result["forward_s"] + result["backward_s"]
    result["jvp_over_forward"] = result["jvp_s"] / result["forward_s"]

    # stage breakdown of a no-grad forward (projection+SH, binning, compositing)
    composite = get_compositor(compositor)
    with torch.no_grad():
        features = torch.cat([proj.colors, proj.depths[:, None]], dim=1)
        bg = torch.tensor([1.0, 1.0, 1.0, 0.0])

        def comp():
            composite(proj.means2d, proj.conics, features, proj.opacities, bins,
                      cam.width, cam.height, bg)

        def proj_fn():
            project_fn(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest, cam, 3)

        def bin_fn():
            bin_splats(proj.means2d, proj.radii, proj.depths, cam.width, cam.height,
                       proj.conics, proj.opacities)

        result["stage_project_s"], _ = _median_time(proj_fn, reps)
        result["stage_bin_s"], _ = _median_time(bin_fn, reps)
        result["stage_composite_s"], _ = _median_time(comp, reps)
    if backend == "cpu":
        result["kernels"] = measure_kernels(proj, bins, cam.width, cam.height, reps, case.seed)
    result["first_project_s"] = t1 - t0
    result["first_bin_s"] = t2 - t1
    result["reference_padded_pairs"] = pairs
    result["rss_after_scene_bytes"] = rss_scene
    result["peak_rss_bytes"] = _rss("VmHWM")
    result["load_after"] = _load()
    return result


def measure_compile() -> dict[str, float]:
    """Time the first call of each ``cpu`` kernel in this process (JIT compile or cache load)."""
    import torch

    t0 = time.perf_counter()
    from trsplat.render import composite_cpu as cc  # noqa: F401
    from trsplat.render import cpu_kernels as K

    t_import = time.perf_counter() - t0
    import numpy as np

    g = np.zeros((1, 10), dtype=np.float32)
    g[0, :6] = (0.0, 0.0, 1.0, 0.0, 1.0, 0.5)
    sid = np.zeros(1, dtype=np.int64)
    off = np.array([0, 1], dtype=np.int64)
    bg = np.ones(4, dtype=np.float32)
    out: dict[str, float] = {"import_s": t_import}

    def timed(name, fn, *args):
        ta = time.perf_counter()
        res = K.run_parallel(fn, *args) if name in ("forward", "jvp", "backward") else fn(*args)
        out[name + "_s"] = time.perf_counter() - ta
        return res

    boxes = np.empty((1, 4), dtype=np.int32)
    timed("boxes", K.splat_boxes, g, 4, 4, boxes)
    img = np.empty((4, 4, 4), np.float32)
    tf = np.empty((4, 4), np.float64)
    nu = np.empty((4, 4), np.int32)
    timed("forward", K.forward_kernel, g, boxes, sid, off, 1, 1, 4, 4, bg, img, tf, nu)
    timed("jvp", K.jvp_kernel, g, g.copy(), boxes, sid, off, 1, 1, 4, 4, bg, img, tf, nu,
          img.copy(), tf.astype(np.float32))
    ent = np.empty((1, 10), np.float32)
    timed("backward", K.backward_kernel, g, boxes, sid, off, 1, 1, 4, 4, bg, tf, nu, img,
          tf.astype(np.float32), ent)
    timed("reduce", K.reduce_entries, sid, ent, 1, 2)

    # tile binning (counting sort) and the projection's VJP / JVP kernels
    import torch.autograd.forward_ad as fwAD

    from trsplat.render.cpu_project import project_cpu
    from trsplat.render.tiles import bin_splats

    g, cam = synthetic_scene(50, 32, 32)
    ta = time.perf_counter()
    bin_splats(torch.rand(50, 2) * 32, torch.full((50,), 3), torch.rand(50) + 1.0, 32, 32)
    out["binning_s"] = time.perf_counter() - ta
    gg = g.clone().requires_grad_()
    ta = time.perf_counter()
    p = project_cpu(gg.means, gg.log_scales, gg.quats, gg.opacity_logits, gg.sh_dc, gg.sh_rest, cam, 3)
    out["project_forward_s"] = time.perf_counter() - ta
    ta = time.perf_counter()
    p.conics.sum().backward()
    out["project_vjp_s"] = time.perf_counter() - ta
    ta = time.perf_counter()
    with fwAD.dual_level():
        dual = fwAD.make_dual(g.means, torch.ones_like(g.means))
        project_cpu(dual, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest, cam, 3)
    out["project_jvp_s"] = time.perf_counter() - ta
    out["total_s"] = sum(v for k, v in out.items() if k != "total_s")
    return out


# -- orchestration --------------------------------------------------------------------------------
def wait_for_quiet(max_pressure: float, timeout_s: float, poll_s: float = 5.0) -> float | None:
    """Wait until the 10 s CPU pressure (Linux PSI) is below ``max_pressure`` percent.

    Returns the pressure when it returned (None where PSI is unavailable); gives up after
    ``timeout_s`` seconds (the case then records the pressure it ran under).
    """
    t_end = time.monotonic() + timeout_s
    while True:
        p = _load().get("cpu_pressure_some_avg10")
        if p is None or p < max_pressure or time.monotonic() >= t_end:
            return p
        time.sleep(poll_s)


def _run_worker(task: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "trsplat.bench.render_bench", "--worker", json.dumps(task)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout)[-2000:], "returncode": proc.returncode}
    return json.loads(lines[-1])


def _worker_main(task: dict[str, Any]) -> dict[str, Any]:
    if task["what"] == "compile":
        return measure_compile()
    case = BenchCase(**task["case"])
    return measure_case(case, task["backend"], task["repeats"], task["max_reference_s"],
                        task["data_dir"])


def run_render_bench(
    out_path: str | os.PathLike | None,
    cases: Iterable[BenchCase] | None = None,
    backends: Sequence[str] = ("cpu", "reference"),
    repeats: int = 5,
    *,
    max_reference_s: float = 150.0,
    data_dir: str | os.PathLike = DEFAULT_DATA,
    isolate: bool = True,
    quiet_pressure: float | None = None,
    quiet_timeout_s: float = 900.0,
    log=print,
) -> dict[str, Any]:
    """Run the benchmark, write ``out_path`` (JSON, atomically) and return the result dict.

    Args:
        cases: scenes to time (default :data:`DEFAULT_CASES`).
        backends: compositing backends to compare.
        repeats: timed runs per measurement (median reported), after one warm-up run.
        max_reference_s: skip a reference case whose estimated time for one forward + backward
            + JVP exceeds this many seconds.
        isolate: run each (case, backend) in a fresh process (per-case peak RSS); if False,
            everything runs in this process and ``peak_rss_bytes`` is the process peak so far.
        quiet_pressure: on a shared machine, wait before each case (up to ``quiet_timeout_s``)
            until the CPU pressure (``/proc/pressure/cpu`` avg10, percent) is below this.
    """
    cases = list(DEFAULT_CASES if cases is None else cases)
    result: dict[str, Any] = {"machine": machine_info(), "cases": [], "compile_s": {},
                              "settings": {"repeats": repeats, "backends": list(backends),
                                           "max_reference_s": max_reference_s,
                                           "isolated_processes": isolate,
                                           "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}}
    if any(b.startswith("cpu") for b in backends):
        if isolate:
            with tempfile.TemporaryDirectory() as cache_dir:
                env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
                result["compile_s"]["cold"] = _run_worker({"what": "compile"}, env)
            result["compile_s"]["cached"] = _run_worker({"what": "compile"})
        else:
            result["compile_s"]["this_process"] = measure_compile()
        log(f"compile: {json.dumps(result['compile_s'])}")
    for case in cases:
        for backend in backends:
            task = {"what": "case", "case": asdict(case), "backend": backend, "repeats": repeats,
                    "max_reference_s": max_reference_s, "data_dir": str(data_dir)}
            if quiet_pressure is not None:
                waited = time.monotonic()
                p = wait_for_quiet(quiet_pressure, quiet_timeout_s)
                task_note = {"waited_for_quiet_s": time.monotonic() - waited, "pressure_at_start": p}
            else:
                task_note = {}
            log(f"running {case.name} / {backend} ...")
            if isolate:
                res = _run_worker(task)
                res.setdefault("case", case.name)
                res.setdefault("backend", backend)
                res.setdefault("n_gaussians", case.n_gaussians)
                res.setdefault("width", case.width)
                res.setdefault("height", case.height)
            else:
                res = _worker_main(task)
            res.update(task_note)
            result["cases"].append(res)
            log("  " + _row(res))
            if out_path is not None:
                _write(out_path, result)
    _add_speedups(result)
    if out_path is not None:
        _write(out_path, result)
    return result


def _write(path, data) -> None:
    from trsplat.io_utils import write_json

    write_json(path, data)


def _add_speedups(result: dict[str, Any]) -> None:
    by_case: dict[str, dict[str, dict]] = {}
    for c in result["cases"]:
        by_case.setdefault(c.get("case"), {})[c.get("backend")] = c
    for per in by_case.values():
        ref = per.get("reference")
        if not ref or ref.get("forward_s") is None:
            continue
        for backend, c in per.items():
            if backend == "reference" or c.get("forward_s") is None:
                continue
            c["speedup_forward_backward_vs_reference"] = (
                (ref["forward_s"] + ref["backward_s"]) / (c["forward_s"] + c["backward_s"]))
            c["speedup_jvp_vs_reference"] = ref["jvp_s"] / c["jvp_s"]


def _fmt(x, unit="s") -> str:
    if x is None:
        return "—"
    if unit == "s":
        return f"{x * 1000:.1f} ms" if x < 1 else f"{x:.2f} s"
    if unit == "x":
        return f"{x:.1f}x"
    if unit == "MiB":
        return f"{x / 2**20:.0f}"
    return str(x)


def _row(c: dict[str, Any]) -> str:
    note = c.get("skipped") or c.get("error", "")
    if note:
        note = " ".join(str(note).split())[:120]
    return (f"| {c.get('case', '?')} | {c.get('backend')} | {c.get('n_gaussians')} | "
            f"{c.get('width')}x{c.get('height')} | {_fmt(c.get('forward_s'))} | "
            f"{_fmt(c.get('backward_s'))} | {_fmt(c.get('jvp_s'))} | "
            f"{_fmt(c.get('jvp_over_forward'), 'x')} | "
            f"{_fmt(c.get('speedup_forward_backward_vs_reference'), 'x')} | "
            f"{_fmt(c.get('peak_rss_bytes'), 'MiB')} | {note} |")


def format_table(result: dict[str, Any]) -> str:
    """Markdown table of a :func:`run_render_bench` result."""
    m = result.get("machine", {})
    lines = [
        f"Machine: {m.get('cpu_model')}, {m.get('cores')} cores; torch {m.get('torch')}, "
        f"numba {m.get('numba')}, Python {m.get('python')}",
        "",
        "| case | backend | N | size | forward | backward | JVP | JVP/fwd | fwd+bwd speed-up | "
        "peak RSS MiB | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [_row(c) for c in result["cases"]]
    kern = [c for c in result["cases"] if c.get("kernels")]
    if kern:
        lines += ["", "Compositing kernels alone (pairs: (pixel, splat) pairs evaluated; probe: plain "
                  "blend loop over every pixel of every tile-list entry, no culling):", "",
                  "| case | kernel | time | pairs | pairs/s | of probe's pairs/s |",
                  "|---|---|---|---|---|---|"]
        for c in kern:
            k = c["kernels"]
            for name in ("forward", "vjp", "jvp", "probe"):
                r = k[name]
                frac = f"{100 * r['fraction_of_probe']:.0f}%" if "fraction_of_probe" in r else "—"
                lines.append(f"| {c['case']} | {name} | {_fmt(r['s'])} | {r['pairs'] / 1e6:.2f} M | "
                             f"{r['pairs_per_s'] / 1e6:.0f} M/s | {frac} |")
    comp = result.get("compile_s", {})
    for key, val in comp.items():
        if isinstance(val, dict) and "total_s" in val:
            parts = ", ".join(f"{k[:-2]} {v:.2f} s" for k, v in val.items() if k.endswith("_s"))
            lines.append("")
            lines.append(f"cpu kernels first call ({key}): {parts}")
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------
def _count(text: str) -> int:
    return int(float(text.lower().replace("k", "e3").replace("m", "e6")))


def _parse_case(text: str) -> BenchCase:
    """``N:WxH`` (synthetic) or ``chair[:N[:SIZE]]`` (SIZE x SIZE, default 800; 200 = --downscale 4)."""
    try:
        if text.startswith("chair"):
            parts = text.split(":")
            n = _count(parts[1]) if len(parts) > 1 else 100_000
            size = int(parts[2]) if len(parts) > 2 else 800
            return BenchCase(f"chair-{n // 1000}k-{size}", n, size, size, kind="chair")
        n_txt, size = text.split(":")
        n = _count(n_txt)
        w, h = (int(v) for v in size.lower().split("x"))
        return BenchCase(f"synthetic-{n_txt}-{w}x{h}", n, w, h)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(
            f"bad case {text!r}: use N:WxH (e.g. 100k:400x400) or chair[:N[:SIZE]]") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trsplat bench render``."""
    parser.add_argument("--out", default="render_bench.json", help="JSON file to write (default: render_bench.json)")
    parser.add_argument("--backends", default="cpu,reference",
                        help="comma-separated backends (default: cpu,reference)")
    parser.add_argument("--case", dest="cases", action="append", type=_parse_case, default=None,
                        help="scene N:WxH (synthetic) or chair[:N[:SIZE]]; repeatable (default: 10k:200x200, "
                             "100k:400x400, 300k:800x800, chair:100k)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--max-reference-s", type=float, default=150.0,
                        help="skip a reference case whose forward+backward+JVP is estimated to take "
                             "longer than this many seconds (default: 150)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="nerf_synthetic chair folder")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="run all cases in this process (peak RSS is then cumulative)")
    parser.add_argument("--wait-quiet", type=float, default=None, metavar="PCT",
                        help="on a shared machine: before each case wait (up to 15 min) until the "
                             "10 s CPU pressure (/proc/pressure/cpu) is below PCT percent")


def main(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    result = run_render_bench(args.out, cases=args.cases, backends=backends, repeats=args.repeats,
                              max_reference_s=args.max_reference_s, data_dir=args.data,
                              isolate=args.isolate, quiet_pressure=args.wait_quiet)
    print()
    print(format_table(result))
    print(f"\nwrote {args.out}")
    return 0 if not any("error" in c for c in result["cases"]) else 1


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        tune_process()  # malloc; the environment (read at torch's import) comes from the parent command
        print(json.dumps(_worker_main(json.loads(sys.argv[2]))))
        sys.exit(0)
    _p = argparse.ArgumentParser(prog="python -m trsplat.bench.render_bench")
    add_arguments(_p)
    sys.exit(main(_p.parse_args()))
