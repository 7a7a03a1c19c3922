"""numba kernels of the ``cpu`` compositing backend (forward, VJP, JVP).

All kernels share one structure (see ``docs/backends_cpu.md``):

* ``prange`` over 16x16 tiles (dynamically scheduled in chunks of one tile, see
  :func:`run_parallel`); each tile keeps its 256 pixels' state in small local arrays;
* the tile's depth-sorted splat list is walked *splat-outer*: each splat's parameters are loaded
  once and applied to the pixels of the tile that lie in the splat's conservative "can have
  α ≥ 1/255" box (:func:`splat_boxes`), so pixels that cannot be touched are never visited;
* every per-(pixel, splat) decision (power > 0, α < 1/255, α clamp at 0.99, the T < 1e-4 stop)
  is evaluated with the same float32 operations, in the same order, as the reference
  compositor; transmittance is carried in float64 and rounded to float32 where the reference
  (whose ``torch.cumprod`` accumulates in double on CPU) rounds it; ``exp`` is libm's float32
  ``expf`` (one ulp from torch's vectorised ``exp`` on ~1% of arguments).

Splat parameters are packed as one (V, 6 + C) float32 array ``gdata`` with columns
``[mean_x, mean_y, conic_a, conic_b, conic_c, opacity, feature_0 .. feature_{C-1}]``.

The VJP does not scatter into per-splat gradients from several threads: it writes one row of
partial gradients per tile-list entry (deterministic, no atomics), and :func:`reduce_entries`
sums them per splat in float64. Memory is O(V + M + H·W) with M the number of tile/splat
intersections.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

TILE = 16
TILE_PIX = TILE * TILE
F32 = np.float32
ALPHA_MAX = np.float32(0.99)
ALPHA_MIN = np.float32(1.0 / 255.0)
T_MIN = np.float32(1e-4)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
N_GEOM = 6  # mean x, mean y, conic a, b, c, opacity

# Safety margins of the conservative per-splat pixel box (see splat_boxes).
_BOX_REL = 1e-5      # relative error allowance on the float32 quadratic form
_BOX_LOG = 1e-5      # allowance on the log-threshold (exp / multiply rounding)
_BOX_ABS = 1e-3      # pixels
_BOX_POS = 1e-6      # relative to the coordinate magnitude (rounding of mean - pixel)


def run_parallel(fn, *args):
    """Call a ``parallel=True`` kernel with dynamic scheduling (chunks of one tile)."""
    with numba.parallel_chunksize(1):
        return fn(*args)


@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def splat_boxes(gdata, width, height, boxes):
    """Conservative inclusive pixel box [x0, x1] × [y0, y1] of each splat's α ≥ 1/255 region.

    A pixel outside the box provably fails ``power <= 0 and α >= 1/255`` when those are
    evaluated in float32 as the kernels do, so skipping it never changes a result. The ellipse
    q(d) = dᵀ Q d ≤ t, t = 2 ln(o / α_min), is enlarged to absorb float32 rounding: the
    diagonal of Q is shrunk and |b| grown by a relative 1e-5 (the float error of q is below
    ~3e-7 of a·dx² + c·dy² + 2|b·dx·dy|), t is grown, and the box is widened by 1e-3 px plus
    1e-6 of the coordinates' magnitude. Splats whose conic is not safely positive definite, or
    that have non-finite values, get the whole image (no culling); splats with o < 1/255 can
    never pass the α test and get an empty box.
    """
    n = gdata.shape[0]
    for i in prange(n):
        mx = np.float64(gdata[i, 0])
        my = np.float64(gdata[i, 1])
        a = np.float64(gdata[i, 2])
        b = np.float64(gdata[i, 3])
        c = np.float64(gdata[i, 4])
        o = gdata[i, 5]
        if not (o >= ALPHA_MIN):  # also NaN: alpha is never >= 1/255
            boxes[i, 0] = 1
            boxes[i, 1] = 0
            boxes[i, 2] = 1
            boxes[i, 3] = 0
            continue
        full = True
        if (math.isfinite(mx) and math.isfinite(my) and math.isfinite(a) and math.isfinite(b)
                and math.isfinite(c) and math.isfinite(np.float64(o))):
            aa = a * (1.0 - _BOX_REL)
            cc = c * (1.0 - _BOX_REL)
            bb = abs(b) * (1.0 + _BOX_REL)
            det = aa * cc - bb * bb
            if aa > 0.0 and cc > 0.0 and det > 0.0:
                t = 2.0 * (math.log(np.float64(o) / np.float64(ALPHA_MIN)) + _BOX_LOG) * (1.0 + _BOX_REL)
                if t < 0.0:
                    t = 0.0
                rx = math.sqrt(t * cc / det)
                ry = math.sqrt(t * aa / det)
                mag = abs(mx) + abs(my) + width + height
                margin = _BOX_ABS + _BOX_POS * mag
                lo_x = math.ceil(mx - rx - margin)
                hi_x = math.floor(mx + rx + margin)
                lo_y = math.ceil(my - ry - margin)
                hi_y = math.floor(my + ry + margin)
                # clamp into [-1, size] before the int conversion
                boxes[i, 0] = np.int32(min(max(lo_x, -1.0), np.float64(width)))
                boxes[i, 1] = np.int32(min(max(hi_x, -1.0), np.float64(width)))
                boxes[i, 2] = np.int32(min(max(lo_y, -1.0), np.float64(height)))
                boxes[i, 3] = np.int32(min(max(hi_y, -1.0), np.float64(height)))
                full = False
        if full:
            boxes[i, 0] = 0
            boxes[i, 1] = width - 1
            boxes[i, 2] = 0
            boxes[i, 3] = height - 1


@njit(inline="always")
def _power(mx, my, a, b, c, fx, fy):
    """The reference's float32 power -0.5·(a·dx² + c·dy²) − b·dx·dy, same operation order."""
    dx = mx - fx
    dy = my - fy
    return -HALF * (a * dx * dx + c * dy * dy) - b * dx * dy, dx, dy


@njit(inline="always")
def _exp32(power):
    # float32 libm expf (nearly always correctly rounded; torch's float32 exp differs from the
    # correctly rounded value in ~1% of inputs by one ulp, so near-ties can flip either way).
    return math.exp(power)


@njit(inline="always")
def _power_floor(o):
    """A float32 power below which α = o·exp(power) < 1/255 for certain (skips the exp).

    ln(α_min / o) lowered by 1e-4, far more than the float32 rounding of exp, the product and
    this threshold itself, so the skip never changes a decision.
    """
    return np.float32(math.log(np.float64(ALPHA_MIN) / np.float64(o)) - 1e-4)


@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def forward_kernel(gdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
                   background, image, t_final, n_used):
    """Front-to-back compositing. Writes image (H, W, C) f32, t_final (H, W) f64, n_used (H, W) i32.

    ``n_used[y, x]`` is the position (1-based) in the pixel's tile list of its last
    contributing splat, 0 when nothing contributed.
    """
    n_ch = gdata.shape[1] - N_GEOM
    n_tiles = grid_x * grid_y
    for tile in prange(n_tiles):
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


@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def jvp_kernel(gdata, tdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
               background, image, t_final, n_used, image_dot, alpha_dot):
    """Forward kernel that also pushes tangents ``tdata`` (V, 6 + C, same layout as gdata).

    Writes the primal outputs exactly as :func:`forward_kernel` and, in the same pass, the
    tangents image_dot (H, W, C) and alpha_dot (H, W) (without the background tangent, which
    the caller adds as T_final · ḃg).
    """
    n_ch = gdata.shape[1] - N_GEOM
    n_tiles = grid_x * grid_y
    for tile in prange(n_tiles):
        x0 = (tile % grid_x) * TILE
        y0 = (tile // grid_x) * TILE
        x1 = min(x0 + TILE, width)
        y1 = min(y0 + TILE, height)
        n_pix = (x1 - x0) * (y1 - y0)
        trans = np.ones(TILE_PIX, dtype=np.float64)
        trans_dot = np.zeros(TILE_PIX, dtype=np.float64)
        accum = np.zeros((TILE_PIX, n_ch), dtype=np.float64)
        accum_dot = np.zeros((TILE_PIX, n_ch), dtype=np.float64)
        feat = np.empty(n_ch, dtype=np.float32)
        feat_d = np.empty(n_ch, dtype=np.float64)
        last = np.zeros(TILE_PIX, dtype=np.int32)
        done = np.zeros(TILE_PIX, dtype=np.bool_)
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
            # power tangent as a quadratic in (dx, dy): k1·dx + k2·dy + k3·dx² + k4·dx·dy + k5·dy²
            mx_d = np.float64(tdata[g, 0])
            my_d = np.float64(tdata[g, 1])
            k1 = -(np.float64(a) * mx_d + np.float64(b) * my_d)
            k2 = -(np.float64(b) * mx_d + np.float64(c) * my_d)
            k3 = -0.5 * np.float64(tdata[g, 2])
            k4 = -np.float64(tdata[g, 3])
            k5 = -0.5 * np.float64(tdata[g, 4])
            o_d = np.float64(tdata[g, 5])
            for ch in range(n_ch):
                feat[ch] = gdata[g, N_GEOM + ch]
                feat_d[ch] = np.float64(tdata[g, N_GEOM + ch])
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
                    ex = _exp32(power)
                    alpha_raw = o * ex
                    alpha = alpha_raw
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
                    # tangent of alpha (zero where clamped, as torch.clamp_max)
                    if alpha_raw > ALPHA_MAX:
                        al_d = 0.0
                    else:
                        ddx = np.float64(dx)
                        ddy = np.float64(dy)
                        pw_d = ddx * (k1 + k3 * ddx + k4 * ddy) + ddy * (k2 + k5 * ddy)
                        al_d = np.float64(ex) * o_d + np.float64(alpha_raw) * pw_d
                    w = alpha * np.float32(t_old)
                    t32 = np.float64(np.float32(t_old))
                    al64 = np.float64(alpha)
                    td = trans_dot[p]
                    w_d = al_d * t32 + al64 * td
                    w64 = np.float64(w)
                    for ch in range(n_ch):
                        f = feat[ch]
                        accum[p, ch] += np.float64(f * w)
                        accum_dot[p, ch] += feat_d[ch] * w64 + np.float64(f) * w_d
                    trans_dot[p] = td * (1.0 - al64) - t_old * al_d
                    trans[p] = test_t
                    last[p] = j - start + 1
        for py in range(y0, y1):
            for px in range(x0, x1):
                p = (py - y0) * TILE + px - x0
                tf = np.float32(trans[p])
                td = trans_dot[p]
                for ch in range(n_ch):
                    image[py, px, ch] = np.float32(accum[p, ch]) + tf * background[ch]
                    image_dot[py, px, ch] = np.float32(accum_dot[p, ch] + td * np.float64(background[ch]))
                t_final[py, px] = trans[p]
                n_used[py, px] = last[p]
                alpha_dot[py, px] = np.float32(-td)


@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def backward_kernel(gdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
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
    for tile in prange(n_tiles):
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


@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def reduce_entries(splat_ids, entry_grads, n_splats, n_parts):
    """Sum per-entry gradients into per-splat gradients, float64 accumulation, fixed order.

    Part ``q`` of ``n_parts`` owns the splats with ``id % n_parts == q`` and scans all entries
    in order, so the sums do not depend on the scheduling (deterministic) and no thread writes
    another's rows.
    """
    n_k = entry_grads.shape[1]
    out = np.zeros((n_splats, n_k), dtype=np.float64)
    for q in prange(n_parts):
        for j in range(splat_ids.shape[0]):
            g = splat_ids[j]
            if g % n_parts == q:
                for k in range(n_k):
                    out[g, k] += entry_grads[j, k]
    res = np.empty((n_splats, n_k), dtype=np.float32)
    for i in prange(n_splats):
        for k in range(n_k):
            res[i, k] = np.float32(out[i, k])
    return res
