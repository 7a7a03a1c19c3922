"""What is specific to the ``cpu`` backend; its agreement with ``reference`` is in
``tests/test_backend_conformance.py``.

Deterministic gradients, the conservative pixel-box culling of the kernels (bit-identical to no
culling), the counting-sort binning and its numba tile rectangles (identical to the torch
versions), and ``project_cpu`` (numba projection, VJP and JVP) against torch's ``project``.
Tolerances as in ``tests/helpers.py``.
"""

from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

from tests.helpers import (SCENES, assert_image_close, assert_rel_close, make_scene, random_splats,
                           render_grads, scene_id, tangents)
from trsplat.camera import Camera
from trsplat.gaussians import PARAM_NAMES, Gaussians
from trsplat.render import cpu_kernels as K
from trsplat.render.composite_cpu import _boxes, _pack
from trsplat.render.cpu_project import project_cpu
from trsplat.render.project import project, tile_rect
from trsplat.render.tiles import _bin_splats_torch, bin_splats

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

PROJ_SCENES = [SCENES[i] for i in (0, 2, 3, 6, 7, 8, 9)]
PROJ_IDS = [scene_id(s) for s in PROJ_SCENES]


def test_gradients_are_deterministic():
    g, cam = make_scene(*SCENES[3])
    a = render_grads(g, cam, "cpu", 0)
    b = render_grads(g, cam, "cpu", 0)
    for name in PARAM_NAMES:
        assert torch.equal(a[name], b[name]), name


def test_pixel_box_culling_never_changes_results():
    """Kernels with the conservative per-splat boxes give bit-identical outputs to no culling.

    Includes opacities at the 1/255 threshold, nearly degenerate and indefinite conics,
    non-finite values and splats far off screen.
    """
    width, height = 70, 50
    m, con, f, o, radii, depths, bg = random_splats(8, 3000, width, height, 4, max_var=400.0, spread=20.0)
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


def test_counting_sort_binning_is_identical_to_torch_binning():
    for seed, v, w, h in ((0, 1, 16, 16), (1, 500, 37, 23), (2, 5000, 129, 65), (3, 20000, 400, 300)):
        m, con, f, o, radii, depths, bg = random_splats(seed, v, w, h, 1, max_var=400.0, spread=20.0)
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
PROJ_OUTS = ("means2d", "conics", "depths", "colors", "opacities")


def _project_all(fn, g: Gaussians, cam: Camera, seed: int):
    """Primal, gradients for random cotangents, and forward-mode tangents of ``fn``."""
    with torch.no_grad():
        p0 = project(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest, cam, 3)
    gen = torch.Generator().manual_seed(4000 + seed)
    cot = {k: torch.randn(getattr(p0, k).shape, generator=gen) for k in PROJ_OUTS}
    gg = g.clone().requires_grad_()
    p = fn(gg.means, gg.log_scales, gg.quats, gg.opacity_logits, gg.sh_dc, gg.sh_rest, cam, 3)
    sum((getattr(p, k) * cot[k]).sum() for k in PROJ_OUTS).backward()
    grads = {k: v.grad for k, v in gg.params().items()}
    tans = tangents(g, seed)
    with fwAD.dual_level():
        gd = Gaussians.from_params({k: fwAD.make_dual(v, tans[k]) for k, v in g.params().items()})
        pd = fn(gd.means, gd.log_scales, gd.quats, gd.opacity_logits, gd.sh_dc, gd.sh_rest, cam, 3)
        tans = {k: fwAD.unpack_dual(getattr(pd, k)).tangent for k in PROJ_OUTS}
    return p, grads, tans


@pytest.mark.parametrize("scene", PROJ_SCENES, ids=PROJ_IDS)
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
    tans = tangents(g, 1)

    def conics(fn):
        return lambda p: fn(p["means"], p["log_scales"], p["quats"], p["opacity_logits"],
                            p["sh_dc"], p["sh_rest"], cam, 3).conics

    _, ta = torch.func.jvp(conics(project_cpu), (params,), (tans,))
    _, tb = torch.func.jvp(conics(project), (params,), (tans,))
    assert_rel_close(ta, tb, "func.jvp conics tangent")
    ct = torch.randn(tb.shape, generator=torch.Generator().manual_seed(5))
    ga = torch.func.vjp(conics(project_cpu), params)[1](ct)[0]
    gb = torch.func.vjp(conics(project), params)[1](ct)[0]
    for name in PARAM_NAMES:
        assert_rel_close(ga[name], gb[name], f"func.vjp {name}")


def test_project_cpu_gradient_of_rows_without_cotangent_is_zero():
    """The VJP skips Gaussians whose cotangents are all zero: their gradients are exactly zero,
    and every other Gaussian's gradient is the one it gets with all rows present (each
    Gaussian's gradient depends only on its own row). Rows whose cotangent is zero for all
    outputs but one must still be computed (checked against the torch projection)."""
    g, cam = make_scene(*SCENES[3])
    with torch.no_grad():
        p0 = project_cpu(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest, cam, 3)
    v = len(p0.ids)
    gen = torch.Generator().manual_seed(11)
    cot = {k: torch.randn(getattr(p0, k).shape, generator=gen) for k in PROJ_OUTS}
    role = torch.arange(v) % 7   # 0: no cotangent at all; 1-5: only output PROJ_OUTS[role - 1]; 6: all
    masked = {k: torch.where(((role == 6) | (role == i + 1)).reshape(-1, *[1] * (c.dim() - 1)), c, 0.0)
              for i, (k, c) in enumerate(cot.items())}

    def grads(fn, cotangents):
        gg = g.clone().requires_grad_()
        p = fn(gg.means, gg.log_scales, gg.quats, gg.opacity_logits, gg.sh_dc, gg.sh_rest, cam, 3)
        sum((getattr(p, k) * cotangents[k]).sum() for k in PROJ_OUTS).backward()
        return {k: t.grad for k, t in gg.params().items()}

    full, part, reference = grads(project_cpu, cot), grads(project_cpu, masked), grads(project, masked)
    computed = p0.ids[role > 0]
    for name in PARAM_NAMES:
        skipped = part[name][p0.ids[role == 0]]
        assert torch.equal(skipped, torch.zeros_like(skipped)), name
        assert torch.equal(part[name][p0.ids[role == 6]], full[name][p0.ids[role == 6]]), name
        assert_rel_close(part[name][computed], reference[name][computed], f"grad {name}")
        assert part[name][computed].abs().sum() > 0, name


def test_project_cpu_float64_and_double_backward():
    g, cam = make_scene(*SCENES[2])
    gd = g.map(lambda t: t.double())
    a = project_cpu(gd.means, gd.log_scales, gd.quats, gd.opacity_logits, gd.sh_dc, gd.sh_rest, cam, 3)
    b = project(gd.means, gd.log_scales, gd.quats, gd.opacity_logits, gd.sh_dc, gd.sh_rest, cam, 3)
    assert a.conics.dtype == torch.float64 and torch.equal(a.conics, b.conics)
    gg = g.clone().requires_grad_()
    p = project_cpu(gg.means, gg.log_scales, gg.quats, gg.opacity_logits, gg.sh_dc, gg.sh_rest, cam, 3)
    (gr,) = torch.autograd.grad(p.conics.sum(), gg.means, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gr.sum().backward()


def test_vjp_shares_the_forwards_prepared_arrays():
    """The VJP reuses the forward's packed splats and per-splat tables (keyed by its t_final
    buffer and the unmodified inputs) and gets the same gradients as with fresh ones; the
    entry is dropped with the buffer, and other inputs are never matched to it."""
    import gc

    from trsplat.render import composite_cpu as cc

    width, height = 40, 30
    m, con, f, o, radii, depths, bg = random_splats(5, 400, width, height, 4)
    bins = bin_splats(m, radii, depths, width, height, con, o)
    inputs = [t.clone().requires_grad_(True) for t in (m, con, f, o)]
    before = set(cc._PREPARED)
    image, alpha = cc.composite_cpu(*inputs, bins, width, height, bg)
    new = set(cc._PREPARED) - before
    assert len(new) == 1
    entry = cc._PREPARED[new.pop()]
    assert entry.key == cc._key(tuple(inputs), width, height)
    g_image, g_alpha = torch.randn_like(image), torch.randn_like(alpha)
    shared = torch.autograd.grad((image * g_image).sum() + (alpha * g_alpha).sum(), inputs)
    del image, alpha
    gc.collect()
    assert set(cc._PREPARED) == before  # t_final freed with the graph

    launch_inputs = [t.detach() for t in inputs]
    fresh_inputs = [t.clone().requires_grad_(True) for t in launch_inputs]
    fresh_image, fresh_alpha = cc.composite_cpu(*fresh_inputs, bins, width, height, bg)
    cc._PREPARED.clear()  # the VJP must now prepare its own arrays
    fresh = torch.autograd.grad((fresh_image * g_image).sum() + (fresh_alpha * g_alpha).sum(),
                                fresh_inputs)
    for a, b in zip(shared, fresh):
        assert torch.equal(a, b)
    # another input tensor with the same t_final is never matched to the entry
    pre = cc._prepare(*launch_inputs, _Launch(width, height))
    other = launch_inputs[0].clone()
    buffer = np.zeros((height, width))  # as run_forward's t_final: a numpy-owned buffer
    cc._remember(buffer, pre)
    t_final = torch.from_numpy(buffer)
    assert cc._recall(*launch_inputs, t_final, _Launch(width, height)) is pre
    assert cc._recall(other, *launch_inputs[1:], t_final, _Launch(width, height)) is not pre
    launch_inputs[1].mul_(1.0)  # an in-place change bumps the version
    assert cc._recall(*launch_inputs, t_final, _Launch(width, height)) is not pre


class _Launch:
    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
