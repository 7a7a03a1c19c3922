"""Tight culling (tile binning) and the vectorized CPU kernels (docs/cpu_performance.md).

* ``exp32`` (glibc's expf algorithm in vectorizable numba code) equals the libm ``expf`` the
  kernels used before, on a dense sample of the range the kernels use it on;
* the ellipse-vs-tile test and the kernels' per-row column spans are conservative: a brute
  force over every pixel of every (tile, splat) pair of the 3-sigma binning, with the kernels'
  own float32 decisions, finds no used pixel that they drop;
* compositing with the tight bins gives bit-identical images, alphas, gradients and tangents to
  compositing with the 3-sigma bins, on scenes of many elongated and faint splats, and matches
  the reference backend.
"""

from __future__ import annotations

import math
import platform

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from numba import njit

from trsplat.render import cpu_kernels as K
from trsplat.render.composite_cpu import _boxes, _pack, composite_cpu
from trsplat.render.composite_reference import composite_reference
from trsplat.render.cpu_tiles import culling_ellipse, ellipse_touches_rect
from trsplat.render.tiles import bin_splats

TILE = 16
ALPHA_MIN = np.float32(1.0 / 255.0)
ALPHA_MAX = np.float32(0.99)


# -- scenes ------------------------------------------------------------------------------------
def elongated_splats(seed: int, n: int, width: int, height: int, n_ch: int = 4):
    """Random screen-space splats: elongated (axis ratio up to 30), many faint or at the 1/255
    threshold, some opaque, some nearly degenerate, means partly off screen, depth ties.

    Returns means2d, conics, features, opacities, radii (3-sigma, as project()), depths, bg.
    """
    gen = torch.Generator().manual_seed(seed)
    means = torch.stack([torch.rand(n, generator=gen) * (width + 30) - 15,
                         torch.rand(n, generator=gen) * (height + 30) - 15], 1)
    major = 0.4 + 12.0 * torch.rand(n, generator=gen) ** 2
    ratio = 1.0 + 29.0 * torch.rand(n, generator=gen) ** 2
    angle = math.pi * torch.rand(n, generator=gen)
    c, s = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([c, -s], 1), torch.stack([s, c], 1)], 1)        # (n, 2, 2)
    scales = torch.stack([major, major / ratio], 1)
    cov = rot @ torch.diag_embed(scales ** 2) @ rot.transpose(1, 2) + 0.3 * torch.eye(2)
    cov = cov.double()
    det = cov[:, 0, 0] * cov[:, 1, 1] - cov[:, 0, 1] ** 2
    conics = torch.stack([cov[:, 1, 1] / det, -cov[:, 0, 1] / det, cov[:, 0, 0] / det], 1).float()
    near_degenerate = torch.rand(n, generator=gen) < 0.03
    conics[near_degenerate, 1] = (torch.sqrt(conics[near_degenerate, 0] * conics[near_degenerate, 2])
                                  * (1 - 1e-5) * torch.sign(conics[near_degenerate, 1] + 1e-30))
    kind = torch.rand(n, generator=gen)
    opac = torch.where(kind < 0.4, (1.0 / 255.0) + 0.05 * torch.rand(n, generator=gen),
                       0.05 + 0.9 * torch.rand(n, generator=gen))
    at = kind > 0.9
    opac[at] = (1.0 / 255.0) * (1.0 + 2e-3 * (torch.rand(int(at.sum()), generator=gen) - 0.5))
    opac[kind > 0.97] = 0.999
    lam = 0.5 * (cov[:, 0, 0] + cov[:, 1, 1]) + torch.sqrt(
        torch.clamp(0.25 * (cov[:, 0, 0] - cov[:, 1, 1]) ** 2 + cov[:, 0, 1] ** 2, min=0.1))
    radii = torch.ceil(3.0 * torch.sqrt(lam)).long()
    depths = torch.rand(n, generator=gen) + 1.0
    depths[::5] = depths[0]  # ties
    features = torch.rand(n, n_ch, generator=gen)
    bg = torch.rand(n_ch, generator=gen)
    return means, conics, features, opac, radii, depths, bg


# -- exp32 -------------------------------------------------------------------------------------
@njit(cache=False)
def _exp_mismatches(start_bits, stop_bits, step):
    """(mismatches, max ulp distance, count) of exp32 vs libm expf on float32 bit patterns."""
    bad = 0
    worst = 0
    count = 0
    for u in range(start_bits, stop_bits, step):
        x = np.array([u], dtype=np.uint32).view(np.float32)[0]
        a = K.exp32(x)
        b = math.exp(x)
        count += 1
        if a != b:
            bad += 1
            ua = np.array([a], dtype=np.float32).view(np.int32)[0]
            ub = np.array([b], dtype=np.float32).view(np.int32)[0]
            worst = max(worst, abs(np.int64(ua) - np.int64(ub)))
    return bad, worst, count


def test_exp32_matches_libm_expf():
    """Every 13th float32 in [-5.6, 0] (the range behind every α ≥ 1/255 decision and value)."""
    lo = int(np.array(-0.0, np.float32).view(np.uint32))
    hi = int(np.array(-5.6, np.float32).view(np.uint32))
    bad, worst, count = _exp_mismatches(lo, hi + 1, 13)
    assert count > 8e7
    name, version = platform.libc_ver()
    glibc_new = name == "glibc" and tuple(int(v) for v in version.split(".")[:2]) >= (2, 28)
    if glibc_new:  # same algorithm as glibc's expf: bit-identical
        assert bad == 0, (bad, worst)
    else:  # another libm: both are faithful
        assert worst <= 1, (bad, worst)


def test_exp32_is_accurate():
    x = np.linspace(-100.0, 0.0, 200001).astype(np.float32)
    got = np.array([K.exp32(v) for v in x[::97]])
    want = np.exp(x[::97].astype(np.float64))
    assert np.all(np.abs(got - want) <= 0.51 * np.spacing(want.astype(np.float32)).astype(np.float64) + 1e-45)


# -- conservative culling ------------------------------------------------------------------------
@njit(cache=False)
def _used(mx, my, a, b, c, o, px, py):
    """The kernels' float32 decision: does the splat contribute to pixel (px, py)."""
    dx = mx - np.float32(px)
    dy = my - np.float32(py)
    power = -np.float32(0.5) * (a * dx * dx + c * dy * dy) - b * dx * dy
    if not (power <= np.float32(0.0)):
        return False
    alpha = o * math.exp(power)
    if alpha > ALPHA_MAX:
        alpha = ALPHA_MAX
    return alpha >= ALPHA_MIN


@njit(cache=False)
def _brute_force(gdata, sid, off, grid_x, width, height, kept, ell, out):
    """For every (tile, splat) entry of the 3-sigma bins: count used pixels outside the tight
    bins (out[0]) and outside the kernels' row spans (out[1]); used pixels in total (out[2])."""
    c0 = np.zeros((1, TILE), dtype=np.int32)
    c1 = np.zeros((1, TILE), dtype=np.int32)
    e_ell = np.zeros((1, 1, ell.shape[1]), dtype=np.float64)
    e_geo = np.zeros((1, 1, 7), dtype=np.float32)
    for t in range(off.shape[0] - 1):
        x0 = (t % grid_x) * TILE
        y0 = (t // grid_x) * TILE
        x1 = min(x0 + TILE, width)
        y1 = min(y0 + TILE, height)
        for j in range(off[t], off[t + 1]):
            g = sid[j]
            mx, my, a, b, c, o = (gdata[g, 0], gdata[g, 1], gdata[g, 2], gdata[g, 3],
                                  gdata[g, 4], gdata[g, 5])
            for k in range(ell.shape[1]):
                e_ell[0, 0, k] = ell[g, k]
            e_geo[0, 0, 0] = mx
            e_geo[0, 0, 1] = my
            K._row_spans(e_ell, e_geo, 0, 0, 0, y1 - y0 - 1, x0, y0, 0, x1 - x0, c0, c1)
            for py in range(y0, y1):
                for px in range(x0, x1):
                    if _used(mx, my, a, b, c, o, px, py):
                        out[2] += 1
                        if not kept[t, g]:
                            out[0] += 1
                        k = px - x0
                        if not (c0[0, py - y0] <= k < c1[0, py - y0]):
                            out[1] += 1


@pytest.mark.parametrize("seed,n,width,height", [(0, 1500, 97, 71), (1, 3000, 160, 128), (2, 400, 33, 47)])
def test_culling_and_row_spans_are_conservative(seed, n, width, height):
    m, con, f, o, radii, depths, _ = elongated_splats(seed, n, width, height)
    full = bin_splats(m, radii, depths, width, height)
    tight = bin_splats(m, radii, depths, width, height, con, o)
    n_tiles = full.grid_x * full.grid_y
    kept = np.zeros((n_tiles, n), dtype=np.bool_)
    sid, off = tight.splat_ids.numpy(), tight.tile_offsets.numpy()
    for t in range(n_tiles):
        kept[t, sid[off[t]:off[t + 1]]] = True
    gdata = _pack(m, con, o, f)
    pfloor = np.empty(n, np.float32)
    ell = np.empty((n, K.N_ELL), np.float64)
    K.splat_prep(gdata, width, height, pfloor, ell)
    out = np.zeros(3, np.int64)
    _brute_force(gdata, full.splat_ids.numpy(), full.tile_offsets.numpy(), full.grid_x, width,
                 height, kept, ell, out)
    assert out[2] > 1000                 # the scenes do cover pixels
    assert out[0] == 0, "a used (tile, splat) pair was culled"
    assert out[1] == 0, "a used pixel lies outside the kernel's row span"
    # the culling is active: elongated splats leave many tiles of their rectangle
    assert tight.splat_ids.numel() < 0.8 * full.splat_ids.numel()


def test_tight_bins_keep_the_order():
    """Tight bins are the 3-sigma bins with some entries removed, in the same order."""
    m, con, f, o, radii, depths, _ = elongated_splats(3, 2000, 120, 90)
    full = bin_splats(m, radii, depths, 120, 90)
    tight = bin_splats(m, radii, depths, 120, 90, con, o)
    for t in range(full.grid_x * full.grid_y):
        a = full.splat_ids[full.tile_offsets[t]:full.tile_offsets[t + 1]].tolist()
        b = tight.splat_ids[tight.tile_offsets[t]:tight.tile_offsets[t + 1]].tolist()
        it = iter(a)
        assert all(x in it for x in b)   # b is a subsequence of a


@pytest.mark.parametrize("seed", [4, 5])
def test_tight_bins_are_the_rectangles_filtered_by_the_ellipse_test(seed):
    """Each tile keeps exactly the 3-sigma entries whose culling ellipse touches one of its pixel
    centres (``ellipse_touches_rect``, one pair at a time), in the 3-sigma order."""
    width, height = 150, 110
    m, con, f, o, radii, depths, _ = elongated_splats(seed, 2500, width, height)
    o[::7] = 0.002   # never usable: no tile at all
    full = bin_splats(m, radii, depths, width, height)
    tight = bin_splats(m, radii, depths, width, height, con, o)
    mn, cn, on = m.numpy().astype(np.float32), con.numpy().astype(np.float32), o.numpy().astype(np.float32)
    for t in range(full.grid_x * full.grid_y):
        px0, py0 = (t % full.grid_x) * TILE, (t // full.grid_x) * TILE
        px1, py1 = min(px0 + TILE, width) - 1, min(py0 + TILE, height) - 1
        expected = []
        for s in full.splat_ids[full.tile_offsets[t]:full.tile_offsets[t + 1]].tolist():
            e = culling_ellipse(mn[s, 0], mn[s, 1], cn[s, 0], cn[s, 1], cn[s, 2], on[s], width, height)
            if ellipse_touches_rect(e, mn[s, 0], mn[s, 1], px0, px1, py0, py1):
                expected.append(s)
        assert tight.splat_ids[tight.tile_offsets[t]:tight.tile_offsets[t + 1]].tolist() == expected


# -- the previous scalar kernels (one pixel and splat at a time, libm expf), as an oracle -------
# Copied from the kernels this module's vectorized ones replaced; serial (range, not prange).
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
T_MIN = np.float32(1e-4)
N_GEOM = 6
TILE_PIX = TILE * TILE


@njit(inline="always", cache=False)
def _power(mx, my, a, b, c, fx, fy):
    """The reference's float32 power -0.5·(a·dx² + c·dy²) − b·dx·dy, same operation order."""
    dx = mx - fx
    dy = my - fy
    return -HALF * (a * dx * dx + c * dy * dy) - b * dx * dy, dx, dy


@njit(inline="always", cache=False)
def _exp32(power):
    # float32 libm expf (nearly always correctly rounded; torch's float32 exp differs from the
    # correctly rounded value in ~1% of inputs by one ulp, so near-ties can flip either way).
    return math.exp(power)


@njit(inline="always", cache=False)
def _power_floor(o):
    """A float32 power below which α = o·exp(power) < 1/255 for certain (skips the exp).

    ln(α_min / o) lowered by 1e-4, far more than the float32 rounding of exp, the product and
    this threshold itself, so the skip never changes a decision.
    """
    return np.float32(math.log(np.float64(ALPHA_MIN) / np.float64(o)) - 1e-4)


@njit(fastmath=False, cache=False, error_model="numpy")
def _scalar_forward(gdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
                   background, image, t_final, n_used):
    """Front-to-back compositing. Writes image (H, W, C) f32, t_final (H, W) f64, n_used (H, W) i32.

    ``n_used[y, x]`` is the position (1-based) in the pixel's tile list of its last
    contributing splat, 0 when nothing contributed.
    """
    n_ch = gdata.shape[1] - N_GEOM
    n_tiles = grid_x * grid_y
    for tile in range(n_tiles):
        x0 = (tile % grid_x) * TILE
        y0 = (tile // grid_x) * TILE
        x1 = min(x0 + TILE, width)
        y1 = min(y0 + TILE, height)
        n_pix = (x1 - x0) * (y1 - y0)
        trans = np.ones(TILE_PIX, dtype=np.float64)
        accum = np.zeros((TILE_PIX, n_ch), dtype=np.float64)
        last = np.zeros(TILE_PIX, dtype=np.int32)
        done = np.zeros(TILE_PIX, dtype=np.bool_)
        feat = np.empty(n_ch, dtype=np.float32)
        n_done = 0
        start = tile_offsets[tile]
        end = tile_offsets[tile + 1]
        for j in range(start, end):
            if n_done == n_pix:
                break
            g = splat_ids[j]
            bx0 = max(boxes[g, 0], x0)
            bx1 = min(boxes[g, 1], x1 - 1)
            by0 = max(boxes[g, 2], y0)
            by1 = min(boxes[g, 3], y1 - 1)
            if bx0 > bx1 or by0 > by1:
                continue
            mx = gdata[g, 0]
            my = gdata[g, 1]
            a = gdata[g, 2]
            b = gdata[g, 3]
            c = gdata[g, 4]
            o = gdata[g, 5]
            p_floor = _power_floor(o)
            for ch in range(n_ch):
                feat[ch] = gdata[g, N_GEOM + ch]
            for py in range(by0, by1 + 1):
                fy = np.float32(py)
                row = (py - y0) * TILE - x0
                for px in range(bx0, bx1 + 1):
                    p = row + px
                    if done[p]:
                        continue
                    power, dx, dy = _power(mx, my, a, b, c, np.float32(px), fy)
                    if not (power <= ZERO) or power < p_floor:
                        continue
                    alpha = o * _exp32(power)
                    if alpha > ALPHA_MAX:
                        alpha = ALPHA_MAX
                    if not (alpha >= ALPHA_MIN):
                        continue
                    t_old = trans[p]
                    test_t = t_old * np.float64(ONE - alpha)
                    if np.float32(test_t) < T_MIN:
                        done[p] = True
                        n_done += 1
                        continue
                    w = alpha * np.float32(t_old)
                    for ch in range(n_ch):
                        accum[p, ch] += np.float64(feat[ch] * w)
                    trans[p] = test_t
                    last[p] = j - start + 1
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * TILE + px - x0
                tf = np.float32(trans[p])
                for ch in range(n_ch):
                    image[py, px, ch] = np.float32(accum[p, ch]) + tf * background[ch]
                t_final[py, px] = trans[p]
                n_used[py, px] = last[p]


@njit(fastmath=False, cache=False, error_model="numpy")
def _scalar_backward(gdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
                    background, t_final, n_used, grad_image, grad_alpha, entry_grads):
    """Back-to-front VJP. Writes entry_grads (M, 6 + C) f32: the gradient each tile-list entry
    receives from its tile's pixels, columns ``[mean_x, mean_y, a, b, c, opacity, features...]``.

    Per pixel it starts from the saved T_final and last contributor, recovers the
    transmittance before each splat as T / (1 − α), and carries the scalar
    ``r = g · (Σ_behind f α T + T_final·bg) / T_after`` so no per-pixel colour history is kept.
    """
    n_ch = gdata.shape[1] - N_GEOM
    n_k = N_GEOM + n_ch
    n_tiles = grid_x * grid_y
    for tile in range(n_tiles):
        x0 = (tile % grid_x) * TILE
        y0 = (tile // grid_x) * TILE
        x1 = min(x0 + TILE, width)
        y1 = min(y0 + TILE, height)
        start = tile_offsets[tile]
        end = tile_offsets[tile + 1]
        trans = np.ones(TILE_PIX, dtype=np.float64)
        resid = np.zeros(TILE_PIX, dtype=np.float64)
        gfin = np.zeros(TILE_PIX, dtype=np.float64)   # grad_alpha · T_final
        last = np.zeros(TILE_PIX, dtype=np.int32)
        gimg = np.zeros((TILE_PIX, n_ch), dtype=np.float64)
        feat = np.empty(n_ch, dtype=np.float64)
        n_max = 0
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * TILE + px - x0
                tf = t_final[py, px]
                trans[p] = tf
                r = 0.0
                for ch in range(n_ch):
                    gv = np.float64(grad_image[py, px, ch])
                    gimg[p, ch] = gv
                    r += gv * np.float64(background[ch])
                resid[p] = r
                gfin[p] = np.float64(grad_alpha[py, px]) * tf
                last[p] = n_used[py, px]
                if last[p] > n_max:
                    n_max = last[p]
        acc = np.zeros(n_k, dtype=np.float64)
        for j in range(start + n_max, end):
            for k in range(n_k):
                entry_grads[j, k] = ZERO
        for jj in range(n_max - 1, -1, -1):
            j = start + jj
            g = splat_ids[j]
            for k in range(n_k):
                acc[k] = 0.0
            bx0 = max(boxes[g, 0], x0)
            bx1 = min(boxes[g, 1], x1 - 1)
            by0 = max(boxes[g, 2], y0)
            by1 = min(boxes[g, 3], y1 - 1)
            if bx0 <= bx1 and by0 <= by1:
                mx = gdata[g, 0]
                my = gdata[g, 1]
                a = gdata[g, 2]
                b = gdata[g, 3]
                c = gdata[g, 4]
                o = gdata[g, 5]
                p_floor = _power_floor(o)
                for ch in range(n_ch):
                    feat[ch] = np.float64(gdata[g, N_GEOM + ch])
                for py in range(by0, by1 + 1):
                    fy = np.float32(py)
                    row = (py - y0) * TILE - x0
                    for px in range(bx0, bx1 + 1):
                        p = row + px
                        if jj >= last[p]:
                            continue
                        power, dx, dy = _power(mx, my, a, b, c, np.float32(px), fy)
                        if not (power <= ZERO) or power < p_floor:
                            continue
                        ex = _exp32(power)
                        alpha_raw = o * ex
                        alpha = alpha_raw
                        if alpha > ALPHA_MAX:
                            alpha = ALPHA_MAX
                        if not (alpha >= ALPHA_MIN):
                            continue
                        # every splat before the last contributor that passes the skip tests
                        # was composited (the T stop is a prefix), so no T test here.
                        al64 = np.float64(alpha)
                        one_m = np.float64(ONE - alpha)
                        t_before = trans[p] / one_m
                        wt = al64 * t_before
                        gdotf = 0.0
                        for ch in range(n_ch):
                            gv = gimg[p, ch]
                            acc[N_GEOM + ch] += gv * wt
                            gdotf += gv * feat[ch]
                        r = resid[p]
                        g_alpha = t_before * (gdotf - r) + gfin[p] / one_m
                        resid[p] = al64 * gdotf + one_m * r
                        trans[p] = t_before
                        if not (alpha_raw > ALPHA_MAX):
                            g_pow = g_alpha * np.float64(alpha_raw)
                            acc[5] += g_alpha * np.float64(ex)
                            ddx = np.float64(dx)
                            ddy = np.float64(dy)
                            acc[0] += -g_pow * (np.float64(a) * ddx + np.float64(b) * ddy)
                            acc[1] += -g_pow * (np.float64(c) * ddy + np.float64(b) * ddx)
                            acc[2] += -0.5 * g_pow * ddx * ddx
                            acc[3] += -g_pow * ddx * ddy
                            acc[4] += -0.5 * g_pow * ddy * ddy
            for k in range(n_k):
                entry_grads[j, k] = np.float32(acc[k])




# -- exactness -----------------------------------------------------------------------------------
def _composite_all(m, con, f, o, bins, w, h, bg, cot, cot_a, tangents, fn=composite_cpu):
    """Image, alpha, gradients of (image·cot + alpha·cot_a) and forward-mode tangents."""
    ins = [t.clone().requires_grad_() for t in (m, con, f, o)]
    img, alpha = fn(ins[0], ins[1], ins[2], ins[3], bins, w, h, bg)
    ((img * cot).sum() + (alpha * cot_a).sum()).backward()
    grads = [t.grad for t in ins]
    with fwAD.dual_level():
        d = [fwAD.make_dual(t, tt) for t, tt in zip((m, con, f, o), tangents)]
        img_d, alpha_d = fn(d[0], d[1], d[2], d[3], bins, w, h, bg)
        tans = [fwAD.unpack_dual(img_d).tangent, fwAD.unpack_dual(alpha_d).tangent]
    return [img.detach(), alpha.detach()] + grads + tans


@pytest.mark.parametrize("seed,n,width,height,n_ch", [(0, 2500, 130, 97, 4), (4, 1200, 70, 50, 3),
                                                      (5, 4000, 200, 120, 4), (6, 600, 40, 36, 1)])
def test_tight_bins_give_bit_identical_results(seed, n, width, height, n_ch):
    m, con, f, o, radii, depths, bg = elongated_splats(seed, n, width, height, n_ch)
    gen = torch.Generator().manual_seed(100 + seed)
    cot = torch.randn(height, width, n_ch, generator=gen)
    cot_a = torch.randn(height, width, generator=gen)
    tangents = [torch.randn(t.shape, generator=gen) for t in (m, con, f, o)]
    full = bin_splats(m, radii, depths, width, height)
    tight = bin_splats(m, radii, depths, width, height, con, o)
    assert tight.splat_ids.numel() < full.splat_ids.numel()
    a = _composite_all(m, con, f, o, full, width, height, bg, cot, cot_a, tangents)
    b = _composite_all(m, con, f, o, tight, width, height, bg, cot, cot_a, tangents)
    names = ["image", "alpha", "grad means2d", "grad conics", "grad features", "grad opacities",
             "tangent image", "tangent alpha"]
    for name, x, y in zip(names, a, b):
        assert torch.equal(x, y), name
    # The reference compositor on the tight bins agrees with itself on the 3-sigma bins (only
    # its batching and summation order change). (cpu vs reference: tests/test_composite_cpu.py;
    # these scenes put opacities at the 1/255 threshold on purpose, where torch's exp and libm's
    # may decide differently.)
    ref_full = _composite_all(m, con, f, o, full, width, height, bg, cot, cot_a, tangents,
                              fn=composite_reference)
    ref_tight = _composite_all(m, con, f, o, tight, width, height, bg, cot, cot_a, tangents,
                               fn=composite_reference)
    for name, x, r in zip(names, ref_tight, ref_full):
        scale = float(r.abs().max()) + 1e-7
        tol = 1e-6 + 1e-6 * r.abs() if name in ("image", "alpha") else 1e-5 * scale
        assert torch.all((x - r).abs() <= tol), (name, float((x - r).abs().max()))


def test_kernel_stats_count_the_evaluated_pairs():
    m, con, f, o, radii, depths, bg = elongated_splats(7, 1500, 96, 64)
    bins = bin_splats(m, radii, depths, 96, 64, con, o)
    gdata = _pack(m, con, o, f)
    boxes = _boxes(gdata, 96, 64)
    sid, off = bins.splat_ids.numpy(), bins.tile_offsets.numpy()
    img = np.empty((64, 96, 4), np.float32)
    tf = np.empty((64, 96), np.float64)
    nu = np.empty((64, 96), np.int32)
    stats = np.zeros((bins.grid_x * bins.grid_y, K.N_STATS), np.int64)
    K.run_parallel(K.forward_kernel, gdata, boxes, sid, off, bins.grid_x, bins.grid_y, 96, 64,
                   bg.numpy(), img, tf, nu, stats)
    pairs = stats[:, K.STAT_PAIRS]
    entries = stats[:, K.STAT_ENTRIES]
    assert np.all(entries <= np.diff(off))
    assert np.all(pairs % 4 == 0)                      # whole 4-lane groups
    assert np.all(pairs <= TILE * TILE * entries)      # at most every pixel of each entry
    assert pairs.sum() >= np.count_nonzero(nu)         # every contributing pixel was evaluated


@pytest.mark.parametrize("seed,n,width,height,n_ch,tight", [(8, 3000, 150, 110, 4, True),
                                                            (9, 1500, 90, 70, 3, False),
                                                            (10, 800, 50, 40, 5, True)])
def test_kernels_bit_identical_to_the_scalar_kernels(seed, n, width, height, n_ch, tight):
    """Forward outputs and per-splat VJP gradients equal the previous scalar kernels' bit for bit
    (3-sigma bins for the oracle; tight or 3-sigma bins for the vectorized kernels)."""
    m, con, f, o, radii, depths, bg = elongated_splats(seed, n, width, height, n_ch)
    full = bin_splats(m, radii, depths, width, height)
    bins = bin_splats(m, radii, depths, width, height, con, o) if tight else full
    gdata = _pack(m, con, o, f)
    boxes = _boxes(gdata, width, height)
    bgn = bg.numpy()
    rng = np.random.default_rng(seed)
    g_img = rng.standard_normal((height, width, n_ch)).astype(np.float32)
    g_alpha = rng.standard_normal((height, width)).astype(np.float32)

    def run(fwd, bwd, b, parallel):
        sid, off = b.splat_ids.numpy(), b.tile_offsets.numpy()
        img = np.empty((height, width, n_ch), np.float32)
        tf = np.empty((height, width), np.float64)
        nu = np.empty((height, width), np.int32)
        args = (gdata, boxes, sid, off, b.grid_x, b.grid_y, width, height, bgn)
        (K.run_parallel if parallel else (lambda fn, *a: fn(*a)))(fwd, *args, img, tf, nu)
        ent = np.empty((sid.shape[0], gdata.shape[1]), np.float32)
        (K.run_parallel if parallel else (lambda fn, *a: fn(*a)))(bwd, *args, tf, nu, g_img, g_alpha, ent)
        return img, tf, K.reduce_entries(sid, ent, gdata.shape[0], 2)

    want = run(_scalar_forward, _scalar_backward, full, False)
    got = run(K.forward_kernel, K.backward_kernel, bins, True)
    for name, a, b in zip(("image", "t_final", "per-splat gradients"), got, want):
        np.testing.assert_array_equal(a, b, err_msg=name)
