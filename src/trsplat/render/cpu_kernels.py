"""numba kernels of the ``cpu`` compositing backend (forward, VJP, JVP).

All kernels share one structure (``docs/backends_cpu.md``; the vectorized layout and its
measurements: ``docs/cpu_performance.md``):

* ``prange`` over 16x16 tiles (dynamically scheduled in chunks of one tile, see
  :func:`run_parallel`); each tile keeps its 256 pixels' state in per-thread scratch arrays
  allocated outside the loop (so numba marks them ``noalias`` and LLVM vectorizes freely);
* the tile's depth-sorted splat list is gathered in chunks into contiguous scratch and walked
  *splat-outer*: each splat is applied to the pixels of the tile that lie in its conservative
  "can have α ≥ 1/255" region, row by row: its pixel box (:func:`splat_boxes`) cut to the
  columns its ellipse reaches in that row (:func:`_row_spans`), widened to whole 4-lane groups;
* every per-(pixel, splat) decision (power > 0, α < 1/255, α clamp at 0.99, the T < 1e-4 stop)
  is evaluated with the same float32 operations, in the same order, as the reference
  compositor, branch-free over the row's lanes; transmittance is carried in float64 and rounded
  to float32 where the reference (whose ``torch.cumprod`` accumulates in double on CPU) rounds
  it; ``exp`` is :func:`exp32`, glibc's float32 ``expf`` algorithm in vectorizable form
  (bit-identical to libm's ``expf``, one ulp from torch's vectorised ``exp`` on ~1% of
  arguments).

Splat parameters are packed as one (V, 6 + C) float32 array ``gdata`` with columns
``[mean_x, mean_y, conic_a, conic_b, conic_c, opacity, feature_0 .. feature_{C-1}]``.

The VJP does not scatter into per-splat gradients from several threads: it writes one row of
partial gradients per tile-list entry (deterministic, no atomics; each row summed over its
pixels in row-major order), and :func:`reduce_entries` sums them per splat in float64. Memory is
O(V + M + H·W) with M the number of tile/splat intersections.
"""

from __future__ import annotations

import math
from decimal import Decimal, getcontext

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from trsplat.render.cpu_tiles import culling_ellipse

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


def run_parallel(fn, *args, **kwargs):
    """Call a ``parallel=True`` kernel with dynamic scheduling (chunks of one tile)."""
    with numba.parallel_chunksize(1):
        return fn(*args, **kwargs)


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


# -- exp -------------------------------------------------------------------------------------
@intrinsic
def _f64_bits(typingctx, x):
    """The bit pattern of a float64 as int64 (an LLVM bitcast, vectorizable)."""
    sig = types.int64(types.float64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return sig, codegen


@intrinsic
def _bits_f64(typingctx, x):
    """The float64 with a given int64 bit pattern (an LLVM bitcast, vectorizable)."""
    sig = types.float64(types.int64)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return sig, codegen


def _exp_table() -> np.ndarray:
    """tab[i] = bits(round-to-nearest 2^(i/32)) − (i << 47), i = 0..31 (see :func:`exp32`)."""
    getcontext().prec = 60
    tab = np.empty(32, dtype=np.int64)
    for i in range(32):
        value = float(Decimal(2) ** (Decimal(i) / Decimal(32)))  # correctly rounded
        tab[i] = int(np.array(value).view(np.int64)) - (i << 47)
    return tab


EXP_TAB = _exp_table()
_EXP_INVLN2N = float.fromhex("0x1.71547652b82fep+0") * 32.0
_EXP_SHIFT = float.fromhex("0x1.8p+52")
_EXP_C0 = float.fromhex("0x1.c6af84b912394p-5") / 32.0 / 32.0 / 32.0
_EXP_C1 = float.fromhex("0x1.ebfce50fac4f3p-3") / 32.0 / 32.0
_EXP_C2 = float.fromhex("0x1.62e42ff0c52d6p-1") / 32.0
EXP_LO = np.float32(-100.0)  # exp32's inputs are clamped to [EXP_LO, 0] by the kernels


@njit(inline="always")
def exp32(x):
    """float32 exp of x in [-100, 0] with glibc's ``expf`` algorithm, vectorizable.

    x·32/ln2 = k + r (k rounded to nearest with the 1.5·2^52 shift), 2^(k/32) from the
    32-entry table, a cubic in r, all in float64, rounded once to float32: the same operations
    as glibc ≥ 2.28's ``expf`` (and musl's), so the results are bit-identical to the libm ``expf``
    the previous scalar kernels called (checked exhaustively on [-5.6, 0], the range where the
    kernels' decisions and values use it; ``docs/cpu_performance.md``). Unlike a libm call it
    has no branches and LLVM vectorizes it (the table reads stay scalar loads).
    """
    xd = np.float64(x)
    z = _EXP_INVLN2N * xd
    kd = z + _EXP_SHIFT
    ki = _f64_bits(kd)
    kd = kd - _EXP_SHIFT
    r = z - kd
    s = _bits_f64(EXP_TAB[np.uint64(ki & 31)] + (ki << 47))
    p = _EXP_C0 * r + _EXP_C1
    r2 = r * r
    y = _EXP_C2 * r + 1.0
    y = p * r2 + y
    return np.float32(y * s)


@njit(inline="always")
def _power_floor(o):
    """A float32 power below which α = o·exp(power) < 1/255 for certain (skips the pixel).

    ln(α_min / o) lowered by 1e-4, far more than the float32 rounding of exp, the product and
    this threshold itself, so the skip never changes a decision.
    """
    return np.float32(math.log(np.float64(ALPHA_MIN) / np.float64(o)) - 1e-4)


# Per-splat row-span constants (splat_prep -> ell columns)
N_ELL = 10
(L_STATE, L_M, L_B, L_DET, L_INV_A, L_AT, L_XMAX, L_YMAX, L_YR, L_SLACK) = range(N_ELL)


@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def splat_prep(gdata, width, height, pfloor, ell):
    """Per splat, once instead of per tile-list entry: pfloor[i] = :func:`_power_floor` of its
    opacity, and ell[i] the constants of its culling ellipse
    (:func:`trsplat.render.cpu_tiles.culling_ellipse`) from which the kernels take each row's
    conservative column span (:func:`_row_spans`): state, margin m, B, det = AC − B², 1/A,
    A·t, x_max = sqrt(tC/det), y_max = sqrt(tA/det), y at the largest x (−B·x_max/C) and a
    rounding slack of 1e-7·(x_max + y_max).
    """
    for i in prange(gdata.shape[0]):
        o = gdata[i, 5]
        pfloor[i] = _power_floor(o) if o >= ALPHA_MIN else ZERO
        aa, bb, cc, t, m, state = culling_ellipse(gdata[i, 0], gdata[i, 1], gdata[i, 2],
                                                  gdata[i, 3], gdata[i, 4], o, width, height)
        for k in range(N_ELL):
            ell[i, k] = 0.0
        ell[i, L_STATE] = state
        if state > 0.0:
            det = aa * cc - bb * bb
            x_max = math.sqrt(t * cc / det)
            y_max = math.sqrt(t * aa / det)
            ell[i, L_M] = m
            ell[i, L_B] = bb
            ell[i, L_DET] = det
            ell[i, L_INV_A] = 1.0 / aa
            ell[i, L_AT] = aa * t
            ell[i, L_XMAX] = x_max
            ell[i, L_YMAX] = y_max
            ell[i, L_YR] = -bb * x_max / cc
            ell[i, L_SLACK] = 1e-7 * (x_max + y_max)


# -- shared pieces of the tile kernels ---------------------------------------------------------
CHUNK = 128          # tile-list entries gathered into the thread's scratch at a time
E_GEO = 7            # gathered per entry: mx, my, a, b, c, o, power floor
STAT_PAIRS = 0       # stats[tile, STAT_PAIRS]: (pixel, splat) lanes evaluated
STAT_ENTRIES = 1     # stats[tile, STAT_ENTRIES]: tile-list entries visited
N_STATS = 2


@njit(inline="always")
def _gather(gdata, pfloor, ell, boxes, splat_ids, lo, hi, x0, y0, x1, y1, tid, e_geo, e_feat,
            e_box, e_ell, with_feat):
    """Copy entries [lo, hi) of the splat list into the thread's contiguous scratch.

    Per entry: the splat's parameters and power floor (e_geo), features (e_feat, if
    ``with_feat``), its pixel box clipped to the tile, in tile coordinates (e_box: x0, x1
    exclusive, y0, y1 inclusive) and its culling ellipse (e_ell). The loads are independent,
    so their cache misses overlap.
    """
    n_ch = gdata.shape[1] - N_GEOM
    for e in range(hi - lo):
        g = splat_ids[lo + e]
        e_box[tid, e, 0] = max(boxes[g, 0], x0) - x0
        e_box[tid, e, 1] = min(boxes[g, 1], x1 - 1) - x0 + 1
        e_box[tid, e, 2] = max(boxes[g, 2], y0) - y0
        e_box[tid, e, 3] = min(boxes[g, 3], y1 - 1) - y0
        for k in range(N_GEOM):
            e_geo[tid, e, k] = gdata[g, k]
        e_geo[tid, e, 6] = pfloor[g]
        for k in range(N_ELL):
            e_ell[tid, e, k] = ell[g, k]
        if with_feat:
            for ch in range(n_ch):
                e_feat[tid, e, ch] = gdata[g, N_GEOM + ch]


@njit(inline="always")
def _row_spans(e_ell, e_geo, tid, e, by0, by1, x0, y0, kx0, kx1, p_c0, p_c1):
    """Columns [p_c0[ry], p_c1[ry]) (tile coordinates) of each row ry in [by0, by1] that the
    entry's splat can reach, within its box columns [kx0, kx1): the x-extent of its culling
    ellipse met with the row's strip |y − (my − py)| ≤ m (as cpu_tiles.ellipse_strip_span,
    with the constants of :func:`splat_prep`). The box alone where the splat has no ellipse."""
    if e_ell[tid, e, L_STATE] > 0.0:
        m = e_ell[tid, e, L_M]
        bb = e_ell[tid, e, L_B]
        det = e_ell[tid, e, L_DET]
        inv_a = e_ell[tid, e, L_INV_A]
        a_t = e_ell[tid, e, L_AT]
        y_max = e_ell[tid, e, L_YMAX]
        y_r = e_ell[tid, e, L_YR]
        slack = e_ell[tid, e, L_SLACK]
        mx = np.float64(e_geo[tid, e, 0])
        my = np.float64(e_geo[tid, e, 1]) - y0
        fx0 = np.float64(kx0)
        fx1 = np.float64(kx1)
        for ry in range(np.uint64(by0), np.uint64(by1 + 1)):
            dy = my - np.float64(ry)
            lo = max(dy - m, -y_max)
            hi = min(dy + m, y_max)
            yr = min(max(y_r, lo), hi)
            yl = min(max(-y_r, lo), hi)
            x_hi = (-bb * yr + math.sqrt(max(a_t - det * yr * yr, 0.0))) * inv_a + slack
            x_lo = (-bb * yl - math.sqrt(max(a_t - det * yl * yl, 0.0))) * inv_a - slack
            c0 = max(math.ceil(mx - x_hi - m) - x0, fx0)
            c1 = min(math.floor(mx - x_lo + m) - x0 + 1.0, fx1)
            empty = (lo > hi) | (c0 >= c1)
            p_c0[tid, ry] = np.int32(fx0 if empty else c0)
            p_c1[tid, ry] = np.int32(fx0 if empty else c1)
    else:
        for ry in range(np.uint64(by0), np.uint64(by1 + 1)):
            p_c0[tid, ry] = kx0
            p_c1[tid, ry] = kx1


@njit(inline="always")
def _row_lanes(kx0, kx1, ry):
    """Lanes [qa, qb) of tile row ry covering columns [kx0, kx1): a multiple of 4 lanes (the
    vector width) inside the row, so the vectorized loops need no scalar remainder."""
    span = (kx1 - kx0 + 3) & ~3
    ka = min(kx0, TILE - span)
    qa = np.uint64(ry * TILE + ka)
    return qa, qa + np.uint64(span)


@njit(inline="always")
def _alpha_lanes(p_fx, p_col, p_alpha, p_ex, tid, qa, qb, mx, dy, a, b, c, o, p_floor, kx0, kx1,
                 store_ex):
    """α of one splat on lanes [qa, qb) of a tile row (float32, the reference's operations).

    p_alpha[q] = min(0.99, o·exp(power)) where the pixel is in the splat's columns, power <= 0,
    power >= the floor and α >= 1/255, else 0; p_ex[q] = exp(power) if ``store_ex`` (the
    derivative kernels need it). dy = my − py of the row. Branch-free so that LLVM vectorizes
    it (``store_ex`` is a constant at each inlined call).
    """
    for q in range(qa, qb):
        dx = mx - p_fx[tid, q]
        power = -HALF * (a * dx * dx + c * dy * dy) - b * dx * dy
        pc = power if power >= EXP_LO else EXP_LO
        pc = pc if pc <= ZERO else ZERO
        ex = exp32(pc)
        alpha = o * ex
        alpha = ALPHA_MAX if alpha > ALPHA_MAX else alpha
        col = p_col[tid, q]
        ok = (power <= ZERO) & (power >= p_floor) & (alpha >= ALPHA_MIN) & (col >= kx0) & (col < kx1)
        p_alpha[tid, q] = alpha if ok else ZERO
        if store_ex:
            p_ex[tid, q] = ex


@njit(inline="always")
def _init_lanes(p_fx, p_col, tid, x0):
    for q in range(TILE_PIX):
        p_fx[tid, q] = np.float32(x0 + (q & (TILE - 1)))
        p_col[tid, q] = q & (TILE - 1)


def _scratch(n_threads: int, shapes: dict) -> dict:
    """Per-thread scratch arrays: name -> (shape after the thread axis, dtype)."""
    return {k: np.empty((n_threads,) + tuple(s), dtype=d) for k, (s, d) in shapes.items()}


def _max_list(tile_offsets: np.ndarray) -> int:
    return int(np.diff(tile_offsets).max()) if tile_offsets.shape[0] > 1 else 0


def _prep(gdata: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(pfloor (V,) float32, ell (V, N_ELL) float64) of :func:`splat_prep`."""
    pfloor = np.empty(gdata.shape[0], dtype=np.float32)
    ell = np.empty((gdata.shape[0], N_ELL), dtype=np.float64)
    if gdata.shape[0]:
        splat_prep(gdata, width, height, pfloor, ell)
    return pfloor, ell


# -- forward ----------------------------------------------------------------------------------
@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def _forward(gdata, pfloor, ell, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
             background, image, t_final, n_used, stats,
             e_geo, e_feat, e_box, e_ell, p_trans, p_acc, p_last, p_alpha, p_ex, p_w, p_fx,
             p_col, p_rows, p_c0, p_c1):
    n_ch = gdata.shape[1] - N_GEOM
    n_tiles = grid_x * grid_y
    for tile in prange(n_tiles):
        tid = numba.get_thread_id()
        x0 = (tile % grid_x) * TILE
        y0 = (tile // grid_x) * TILE
        x1 = min(x0 + TILE, width)
        y1 = min(y0 + TILE, height)
        nx = x1 - x0
        ny = y1 - y0
        _init_lanes(p_fx, p_col, tid, x0)
        for q in range(TILE_PIX):
            p_trans[tid, q] = 1.0
            p_last[tid, q] = 0
            for ch in range(n_ch):
                p_acc[tid, ch, q] = 0.0
        for ry in range(TILE):
            p_rows[tid, ry] = nx if ry < ny else 0
        n_live = nx * ny
        lanes = 0
        visited = 0
        start = tile_offsets[tile]
        end = tile_offsets[tile + 1]
        lo = start
        while lo < end and n_live > 0:
            hi = min(lo + CHUNK, end)
            _gather(gdata, pfloor, ell, boxes, splat_ids, lo, hi, x0, y0, x1, y1, tid, e_geo,
                    e_feat, e_box, e_ell, True)
            for e in range(hi - lo):
                if n_live == 0:
                    break
                visited += 1
                kx0 = e_box[tid, e, 0]
                kx1 = e_box[tid, e, 1]
                by0 = e_box[tid, e, 2]
                by1 = e_box[tid, e, 3]
                if kx0 >= kx1 or by0 > by1:
                    continue
                mx = e_geo[tid, e, 0]
                my = e_geo[tid, e, 1]
                a = e_geo[tid, e, 2]
                b = e_geo[tid, e, 3]
                c = e_geo[tid, e, 4]
                o = e_geo[tid, e, 5]
                p_floor = e_geo[tid, e, 6]
                jj = np.int32(lo - start + e + 1)
                _row_spans(e_ell, e_geo, tid, e, by0, by1, x0, y0, kx0, kx1, p_c0, p_c1)
                for ry in range(by0, by1 + 1):
                    c0 = p_c0[tid, ry]
                    c1 = p_c1[tid, ry]
                    if p_rows[tid, ry] == 0 or c0 >= c1:
                        continue
                    dy = my - np.float32(y0 + ry)
                    qa, qb = _row_lanes(c0, c1, ry)
                    lanes += qb - qa
                    _alpha_lanes(p_fx, p_col, p_alpha, p_ex, tid, qa, qb, mx, dy, a, b, c, o,
                                 p_floor, c0, c1, False)
                    n_stop = 0
                    if n_ch == 4:  # the render path (RGB + depth): one fused pass
                        f0 = e_feat[tid, e, 0]
                        f1 = e_feat[tid, e, 1]
                        f2 = e_feat[tid, e, 2]
                        f3 = e_feat[tid, e, 3]
                        for q in range(qa, qb):
                            alpha = p_alpha[tid, q]
                            t_old = p_trans[tid, q]
                            ok = (alpha > ZERO) & (t_old > 0.0)
                            test_t = t_old * np.float64(ONE - alpha)
                            t32 = np.float32(test_t)
                            stop = ok & (t32 < T_MIN)
                            use = ok & (t32 >= T_MIN)
                            n_stop += np.int64(stop)
                            w = alpha * np.float32(t_old)
                            p_acc[tid, 0, q] = p_acc[tid, 0, q] + (np.float64(f0 * w) if use else 0.0)
                            p_acc[tid, 1, q] = p_acc[tid, 1, q] + (np.float64(f1 * w) if use else 0.0)
                            p_acc[tid, 2, q] = p_acc[tid, 2, q] + (np.float64(f2 * w) if use else 0.0)
                            p_acc[tid, 3, q] = p_acc[tid, 3, q] + (np.float64(f3 * w) if use else 0.0)
                            p_trans[tid, q] = test_t if use else ((-t_old if stop else t_old) + 0.0)
                            p_last[tid, q] = max(p_last[tid, q], jj if use else np.int32(0))
                    else:
                        for q in range(qa, qb):
                            alpha = p_alpha[tid, q]
                            t_old = p_trans[tid, q]
                            ok = (alpha > ZERO) & (t_old > 0.0)
                            test_t = t_old * np.float64(ONE - alpha)
                            t32 = np.float32(test_t)
                            stop = ok & (t32 < T_MIN)
                            use = ok & (t32 >= T_MIN)
                            n_stop += np.int64(stop)
                            p_w[tid, q] = alpha * np.float32(t_old) if use else ZERO
                            p_trans[tid, q] = test_t if use else ((-t_old if stop else t_old) + 0.0)
                            p_last[tid, q] = max(p_last[tid, q], jj if use else np.int32(0))
                        for ch in range(n_ch):
                            f = e_feat[tid, e, ch]
                            for q in range(qa, qb):
                                w = p_w[tid, q]
                                p_acc[tid, ch, q] = p_acc[tid, ch, q] + (np.float64(f * w) if w > ZERO else 0.0)
                    p_rows[tid, ry] -= n_stop
                    n_live -= n_stop
            lo = hi
        for ry in range(ny):
            for k in range(nx):
                q = ry * TILE + k
                t = abs(p_trans[tid, q])
                tf = np.float32(t)
                for ch in range(n_ch):
                    image[y0 + ry, x0 + k, ch] = np.float32(p_acc[tid, ch, q]) + tf * background[ch]
                t_final[y0 + ry, x0 + k] = t
                n_used[y0 + ry, x0 + k] = p_last[tid, q]
        stats[tile, STAT_PAIRS] = lanes
        stats[tile, STAT_ENTRIES] = visited


def forward_kernel(gdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
                   background, image, t_final, n_used, stats=None,
                   prep=None):
    """Front-to-back compositing. Writes image (H, W, C) f32, t_final (H, W) f64, n_used (H, W) i32.

    ``n_used[y, x]`` is the position (1-based) in the pixel's tile list of its last
    contributing splat, 0 when nothing contributed. ``stats`` (T, N_STATS) int64, if given,
    receives per tile the (pixel, splat) lanes evaluated and the list entries visited.
    ``prep``, if given, is :func:`_prep`'s (pfloor, ell) for ``gdata`` (shared between the
    kernels of one render instead of recomputed by each).
    """
    n_ch = gdata.shape[1] - N_GEOM
    nth = numba.config.NUMBA_NUM_THREADS  # thread ids run up to the pool size
    n_tiles = grid_x * grid_y
    m = min(CHUNK, _max_list(tile_offsets))
    sc = _scratch(nth, {
        "e_geo": ((m, E_GEO), np.float32), "e_feat": ((m, n_ch), np.float32),
        "e_box": ((m, 4), np.int32), "e_ell": ((m, N_ELL), np.float64),
        "p_trans": ((TILE_PIX,), np.float64),
        "p_acc": ((n_ch, TILE_PIX), np.float64), "p_last": ((TILE_PIX,), np.int32),
        "p_alpha": ((TILE_PIX,), np.float32), "p_ex": ((TILE_PIX,), np.float32),
        "p_w": ((TILE_PIX,), np.float32), "p_fx": ((TILE_PIX,), np.float32),
        "p_col": ((TILE_PIX,), np.int32), "p_rows": ((TILE,), np.int64),
        "p_c0": ((TILE,), np.int32), "p_c1": ((TILE,), np.int32)})
    if stats is None:
        stats = np.empty((n_tiles, N_STATS), dtype=np.int64)
    pfloor, ell = _prep(gdata, width, height) if prep is None else prep
    _forward(gdata, pfloor, ell, boxes, splat_ids, tile_offsets, grid_x, grid_y, width,
             height, background, image, t_final, n_used, stats, **sc)


# -- forward-mode JVP -------------------------------------------------------------------------
@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def _jvp(gdata, tdata, pfloor, ell, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
         background, image, t_final, n_used, image_dot, alpha_dot, stats,
         e_geo, e_feat, e_box, e_ell, e_tan, p_trans, p_tdot, p_acc, p_adot, p_last, p_alpha,
         p_ex, p_w, p_wd, p_fx, p_col, p_rows, p_c0, p_c1):
    n_ch = gdata.shape[1] - N_GEOM
    n_tiles = grid_x * grid_y
    for tile in prange(n_tiles):
        tid = numba.get_thread_id()
        x0 = (tile % grid_x) * TILE
        y0 = (tile // grid_x) * TILE
        x1 = min(x0 + TILE, width)
        y1 = min(y0 + TILE, height)
        nx = x1 - x0
        ny = y1 - y0
        _init_lanes(p_fx, p_col, tid, x0)
        for q in range(TILE_PIX):
            p_trans[tid, q] = 1.0
            p_tdot[tid, q] = 0.0
            p_last[tid, q] = 0
            for ch in range(n_ch):
                p_acc[tid, ch, q] = 0.0
                p_adot[tid, ch, q] = 0.0
        for ry in range(TILE):
            p_rows[tid, ry] = nx if ry < ny else 0
        n_live = nx * ny
        lanes = 0
        visited = 0
        start = tile_offsets[tile]
        end = tile_offsets[tile + 1]
        lo = start
        while lo < end and n_live > 0:
            hi = min(lo + CHUNK, end)
            _gather(gdata, pfloor, ell, boxes, splat_ids, lo, hi, x0, y0, x1, y1, tid, e_geo,
                    e_feat, e_box, e_ell, True)
            for e in range(hi - lo):
                g = splat_ids[lo + e]
                for k in range(N_GEOM + n_ch):
                    e_tan[tid, e, k] = tdata[g, k]
            for e in range(hi - lo):
                if n_live == 0:
                    break
                visited += 1
                kx0 = e_box[tid, e, 0]
                kx1 = e_box[tid, e, 1]
                by0 = e_box[tid, e, 2]
                by1 = e_box[tid, e, 3]
                if kx0 >= kx1 or by0 > by1:
                    continue
                mx = e_geo[tid, e, 0]
                my = e_geo[tid, e, 1]
                a = e_geo[tid, e, 2]
                b = e_geo[tid, e, 3]
                c = e_geo[tid, e, 4]
                o = e_geo[tid, e, 5]
                p_floor = e_geo[tid, e, 6]
                jj = np.int32(lo - start + e + 1)
                # power tangent as a quadratic in (dx, dy): k1·dx + k2·dy + k3·dx² + k4·dx·dy + k5·dy²
                mx_d = np.float64(e_tan[tid, e, 0])
                my_d = np.float64(e_tan[tid, e, 1])
                k1 = -(np.float64(a) * mx_d + np.float64(b) * my_d)
                k2 = -(np.float64(b) * mx_d + np.float64(c) * my_d)
                k3 = -0.5 * np.float64(e_tan[tid, e, 2])
                k4 = -np.float64(e_tan[tid, e, 3])
                k5 = -0.5 * np.float64(e_tan[tid, e, 4])
                o_d = np.float64(e_tan[tid, e, 5])
                _row_spans(e_ell, e_geo, tid, e, by0, by1, x0, y0, kx0, kx1, p_c0, p_c1)
                for ry in range(by0, by1 + 1):
                    c0 = p_c0[tid, ry]
                    c1 = p_c1[tid, ry]
                    if p_rows[tid, ry] == 0 or c0 >= c1:
                        continue
                    dy = my - np.float32(y0 + ry)
                    ddy = np.float64(dy)
                    qa, qb = _row_lanes(c0, c1, ry)
                    lanes += qb - qa
                    _alpha_lanes(p_fx, p_col, p_alpha, p_ex, tid, qa, qb, mx, dy, a, b, c, o,
                                 p_floor, c0, c1, True)
                    n_stop = 0
                    if n_ch == 4:  # the render path: one fused pass
                        f0 = e_feat[tid, e, 0]
                        f1 = e_feat[tid, e, 1]
                        f2 = e_feat[tid, e, 2]
                        f3 = e_feat[tid, e, 3]
                        g0 = np.float64(f0)
                        g1 = np.float64(f1)
                        g2 = np.float64(f2)
                        g3 = np.float64(f3)
                        d0 = np.float64(e_tan[tid, e, N_GEOM + 0])
                        d1 = np.float64(e_tan[tid, e, N_GEOM + 1])
                        d2 = np.float64(e_tan[tid, e, N_GEOM + 2])
                        d3 = np.float64(e_tan[tid, e, N_GEOM + 3])
                        for q in range(qa, qb):
                            alpha = p_alpha[tid, q]
                            ex = p_ex[tid, q]
                            t_old = p_trans[tid, q]
                            ok = (alpha > ZERO) & (t_old > 0.0)
                            test_t = t_old * np.float64(ONE - alpha)
                            t32 = np.float32(test_t)
                            stop = ok & (t32 < T_MIN)
                            use = ok & (t32 >= T_MIN)
                            n_stop += np.int64(stop)
                            # tangent of alpha (zero where clamped, as torch.clamp_max)
                            alpha_raw = o * ex
                            ddx = np.float64(mx - p_fx[tid, q])
                            pw_d = ddx * (k1 + k3 * ddx + k4 * ddy) + ddy * (k2 + k5 * ddy)
                            al_d = 0.0 if alpha_raw > ALPHA_MAX else np.float64(ex) * o_d + np.float64(alpha_raw) * pw_d
                            al64 = np.float64(alpha)
                            td = p_tdot[tid, q]
                            w = alpha * np.float32(t_old)
                            w_d = al_d * np.float64(np.float32(t_old)) + al64 * td
                            w64 = np.float64(w)
                            p_acc[tid, 0, q] = p_acc[tid, 0, q] + (np.float64(f0 * w) if use else 0.0)
                            p_acc[tid, 1, q] = p_acc[tid, 1, q] + (np.float64(f1 * w) if use else 0.0)
                            p_acc[tid, 2, q] = p_acc[tid, 2, q] + (np.float64(f2 * w) if use else 0.0)
                            p_acc[tid, 3, q] = p_acc[tid, 3, q] + (np.float64(f3 * w) if use else 0.0)
                            p_adot[tid, 0, q] = p_adot[tid, 0, q] + ((d0 * w64 + g0 * w_d) if use else 0.0)
                            p_adot[tid, 1, q] = p_adot[tid, 1, q] + ((d1 * w64 + g1 * w_d) if use else 0.0)
                            p_adot[tid, 2, q] = p_adot[tid, 2, q] + ((d2 * w64 + g2 * w_d) if use else 0.0)
                            p_adot[tid, 3, q] = p_adot[tid, 3, q] + ((d3 * w64 + g3 * w_d) if use else 0.0)
                            p_tdot[tid, q] = (td * (1.0 - al64) - t_old * al_d) if use else (td + 0.0)
                            p_trans[tid, q] = test_t if use else ((-t_old if stop else t_old) + 0.0)
                            p_last[tid, q] = max(p_last[tid, q], jj if use else np.int32(0))
                    else:
                        for q in range(qa, qb):
                            alpha = p_alpha[tid, q]
                            ex = p_ex[tid, q]
                            t_old = p_trans[tid, q]
                            ok = (alpha > ZERO) & (t_old > 0.0)
                            test_t = t_old * np.float64(ONE - alpha)
                            t32 = np.float32(test_t)
                            stop = ok & (t32 < T_MIN)
                            use = ok & (t32 >= T_MIN)
                            n_stop += np.int64(stop)
                            # tangent of alpha (zero where clamped, as torch.clamp_max)
                            alpha_raw = o * ex
                            ddx = np.float64(mx - p_fx[tid, q])
                            pw_d = ddx * (k1 + k3 * ddx + k4 * ddy) + ddy * (k2 + k5 * ddy)
                            al_d = 0.0 if alpha_raw > ALPHA_MAX else np.float64(ex) * o_d + np.float64(alpha_raw) * pw_d
                            al64 = np.float64(alpha)
                            td = p_tdot[tid, q]
                            w = alpha * np.float32(t_old)
                            w_d = al_d * np.float64(np.float32(t_old)) + al64 * td
                            p_w[tid, q] = w if use else ZERO
                            p_wd[tid, q] = w_d if use else 0.0
                            p_tdot[tid, q] = (td * (1.0 - al64) - t_old * al_d) if use else (td + 0.0)
                            p_trans[tid, q] = test_t if use else ((-t_old if stop else t_old) + 0.0)
                            p_last[tid, q] = max(p_last[tid, q], jj if use else np.int32(0))
                        for ch in range(n_ch):
                            f = e_feat[tid, e, ch]
                            f64 = np.float64(f)
                            f_d = np.float64(e_tan[tid, e, N_GEOM + ch])
                            for q in range(qa, qb):
                                w = p_w[tid, q]
                                use = w > ZERO
                                p_acc[tid, ch, q] = p_acc[tid, ch, q] + (np.float64(f * w) if use else 0.0)
                                p_adot[tid, ch, q] = p_adot[tid, ch, q] + (
                                    (f_d * np.float64(w) + f64 * p_wd[tid, q]) if use else 0.0)
                    p_rows[tid, ry] -= n_stop
                    n_live -= n_stop
            lo = hi
        for ry in range(ny):
            for k in range(nx):
                q = ry * TILE + k
                t = abs(p_trans[tid, q])
                tf = np.float32(t)
                td = p_tdot[tid, q]
                for ch in range(n_ch):
                    image[y0 + ry, x0 + k, ch] = np.float32(p_acc[tid, ch, q]) + tf * background[ch]
                    image_dot[y0 + ry, x0 + k, ch] = np.float32(p_adot[tid, ch, q] + td * np.float64(background[ch]))
                t_final[y0 + ry, x0 + k] = t
                n_used[y0 + ry, x0 + k] = p_last[tid, q]
                alpha_dot[y0 + ry, x0 + k] = np.float32(-td)
        stats[tile, STAT_PAIRS] = lanes
        stats[tile, STAT_ENTRIES] = visited


def jvp_kernel(gdata, tdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
               background, image, t_final, n_used, image_dot, alpha_dot, stats=None,
               prep=None):
    """Forward kernel that also pushes tangents ``tdata`` (V, 6 + C, same layout as gdata).

    Writes the primal outputs exactly as :func:`forward_kernel` and, in the same pass, the
    tangents image_dot (H, W, C) and alpha_dot (H, W) (without the background tangent, which
    the caller adds as T_final · ḃg). ``stats`` and ``prep`` as in :func:`forward_kernel`.
    """
    n_ch = gdata.shape[1] - N_GEOM
    nth = numba.config.NUMBA_NUM_THREADS  # thread ids run up to the pool size
    n_tiles = grid_x * grid_y
    m = min(CHUNK, _max_list(tile_offsets))
    sc = _scratch(nth, {
        "e_geo": ((m, E_GEO), np.float32), "e_feat": ((m, n_ch), np.float32),
        "e_box": ((m, 4), np.int32), "e_ell": ((m, N_ELL), np.float64),
        "e_tan": ((m, N_GEOM + n_ch), np.float32),
        "p_trans": ((TILE_PIX,), np.float64), "p_tdot": ((TILE_PIX,), np.float64),
        "p_acc": ((n_ch, TILE_PIX), np.float64), "p_adot": ((n_ch, TILE_PIX), np.float64),
        "p_last": ((TILE_PIX,), np.int32), "p_alpha": ((TILE_PIX,), np.float32),
        "p_ex": ((TILE_PIX,), np.float32), "p_w": ((TILE_PIX,), np.float32),
        "p_wd": ((TILE_PIX,), np.float64), "p_fx": ((TILE_PIX,), np.float32),
        "p_col": ((TILE_PIX,), np.int32), "p_rows": ((TILE,), np.int64),
        "p_c0": ((TILE,), np.int32), "p_c1": ((TILE,), np.int32)})
    if stats is None:
        stats = np.empty((n_tiles, N_STATS), dtype=np.int64)
    pfloor, ell = _prep(gdata, width, height) if prep is None else prep
    _jvp(gdata, tdata, pfloor, ell, boxes, splat_ids, tile_offsets, grid_x, grid_y, width,
         height, background, image, t_final, n_used, image_dot, alpha_dot, stats, **sc)


# -- reverse-mode VJP -------------------------------------------------------------------------
@njit(parallel=True, fastmath=False, cache=True, error_model="numpy")
def _backward(gdata, pfloor, ell, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
              background, t_final, n_used, grad_image, grad_alpha, entry_grads, stats,
              e_geo, e_feat, e_box, e_ell, p_trans, p_resid, p_gfin, p_last, p_gimg, p_alpha,
              p_ex, p_gdf, p_wt, p_term, p_acc, p_fx, p_col, p_c0, p_c1, p_rowmax):
    n_ch = gdata.shape[1] - N_GEOM
    n_k = N_GEOM + n_ch
    n_tiles = grid_x * grid_y
    for tile in prange(n_tiles):
        tid = numba.get_thread_id()
        x0 = (tile % grid_x) * TILE
        y0 = (tile // grid_x) * TILE
        x1 = min(x0 + TILE, width)
        y1 = min(y0 + TILE, height)
        start = tile_offsets[tile]
        end = tile_offsets[tile + 1]
        _init_lanes(p_fx, p_col, tid, x0)
        n_max = 0
        for q in range(TILE_PIX):
            p_trans[tid, q] = 1.0
            p_resid[tid, q] = 0.0
            p_gfin[tid, q] = 0.0
            p_last[tid, q] = 0
            for ch in range(n_ch):
                p_gimg[tid, ch, q] = 0.0
        for py in range(y0, y1):
            for px in range(x0, x1):
                q = (py - y0) * TILE + px - x0
                tf = t_final[py, px]
                p_trans[tid, q] = tf
                r = 0.0
                for ch in range(n_ch):
                    gv = np.float64(grad_image[py, px, ch])
                    p_gimg[tid, ch, q] = gv
                    r += gv * np.float64(background[ch])
                p_resid[tid, q] = r
                p_gfin[tid, q] = np.float64(grad_alpha[py, px]) * tf
                p_last[tid, q] = n_used[py, px]
                n_max = max(n_max, n_used[py, px])
        for ry in range(TILE):
            p_rowmax[tid, ry] = 0
            for k in range(TILE):
                p_rowmax[tid, ry] = max(p_rowmax[tid, ry], p_last[tid, ry * TILE + k])
        for j in range(start + n_max, end):
            for k in range(n_k):
                entry_grads[j, k] = ZERO
        lanes = 0
        hi = start + n_max
        while hi > start:
            lo = max(start, hi - CHUNK)
            _gather(gdata, pfloor, ell, boxes, splat_ids, lo, hi, x0, y0, x1, y1, tid, e_geo,
                    e_feat, e_box, e_ell, True)
            for e in range(hi - lo - 1, -1, -1):
                jj = np.int32(lo - start + e)  # 0-based position in the tile list
                for k in range(n_k):
                    p_acc[tid, k] = 0.0
                s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = s9 = 0.0
                kx0 = e_box[tid, e, 0]
                kx1 = e_box[tid, e, 1]
                by0 = e_box[tid, e, 2]
                by1 = e_box[tid, e, 3]
                if kx0 < kx1 and by0 <= by1:
                    mx = e_geo[tid, e, 0]
                    my = e_geo[tid, e, 1]
                    a = e_geo[tid, e, 2]
                    b = e_geo[tid, e, 3]
                    c = e_geo[tid, e, 4]
                    o = e_geo[tid, e, 5]
                    p_floor = e_geo[tid, e, 6]
                    a64 = np.float64(a)
                    b64 = np.float64(b)
                    c64 = np.float64(c)
                    _row_spans(e_ell, e_geo, tid, e, by0, by1, x0, y0, kx0, kx1, p_c0, p_c1)
                    for ry in range(by0, by1 + 1):
                        c0 = p_c0[tid, ry]
                        c1 = p_c1[tid, ry]
                        if jj >= p_rowmax[tid, ry] or c0 >= c1:
                            continue
                        dy = my - np.float32(y0 + ry)
                        ddy = np.float64(dy)
                        qa, qb = _row_lanes(c0, c1, ry)
                        lanes += qb - qa
                        _alpha_lanes(p_fx, p_col, p_alpha, p_ex, tid, qa, qb, mx, dy, a, b, c, o,
                                     p_floor, c0, c1, True)
                        # only splats before the pixel's last contributor (the T stop is a prefix)
                        if n_ch == 4:  # the render path: one fused pass
                            f0 = np.float64(e_feat[tid, e, 0])
                            f1 = np.float64(e_feat[tid, e, 1])
                            f2 = np.float64(e_feat[tid, e, 2])
                            f3 = np.float64(e_feat[tid, e, 3])
                            for q in range(qa, qb):
                                alpha = p_alpha[tid, q]
                                use = (alpha > ZERO) & (jj < p_last[tid, q])
                                p_alpha[tid, q] = alpha if use else ZERO
                                g0 = p_gimg[tid, 0, q]
                                g1 = p_gimg[tid, 1, q]
                                g2 = p_gimg[tid, 2, q]
                                g3 = p_gimg[tid, 3, q]
                                gdotf = 0.0 + g0 * f0
                                gdotf = gdotf + g1 * f1
                                gdotf = gdotf + g2 * f2
                                gdotf = gdotf + g3 * f3
                                ex = p_ex[tid, q]
                                alpha_raw = o * ex
                                al64 = np.float64(alpha)
                                one_m = np.float64(ONE - alpha)
                                t_now = p_trans[tid, q]
                                t_before = t_now / one_m
                                r = p_resid[tid, q]
                                g_alpha = t_before * (gdotf - r) + p_gfin[tid, q] / one_m
                                p_resid[tid, q] = (al64 * gdotf + one_m * r) if use else (r + 0.0)
                                p_trans[tid, q] = t_before if use else (t_now + 0.0)
                                wt = al64 * t_before
                                live = use & (alpha_raw <= ALPHA_MAX)
                                g_pow = g_alpha * np.float64(alpha_raw)
                                ddx = np.float64(mx - p_fx[tid, q])
                                p_term[tid, 5, q] = g_alpha * np.float64(ex) if live else 0.0
                                p_term[tid, 0, q] = -g_pow * (a64 * ddx + b64 * ddy) if live else 0.0
                                p_term[tid, 1, q] = -g_pow * (c64 * ddy + b64 * ddx) if live else 0.0
                                p_term[tid, 2, q] = -0.5 * g_pow * ddx * ddx if live else 0.0
                                p_term[tid, 3, q] = -g_pow * ddx * ddy if live else 0.0
                                p_term[tid, 4, q] = -0.5 * g_pow * ddy * ddy if live else 0.0
                                p_term[tid, 6, q] = g0 * wt if use else 0.0
                                p_term[tid, 7, q] = g1 * wt if use else 0.0
                                p_term[tid, 8, q] = g2 * wt if use else 0.0
                                p_term[tid, 9, q] = g3 * wt if use else 0.0
                        else:
                            for q in range(qa, qb):
                                p_alpha[tid, q] = p_alpha[tid, q] if jj < p_last[tid, q] else ZERO
                                p_gdf[tid, q] = 0.0
                            for ch in range(n_ch):
                                f = np.float64(e_feat[tid, e, ch])
                                for q in range(qa, qb):
                                    p_gdf[tid, q] = p_gdf[tid, q] + p_gimg[tid, ch, q] * f
                            for q in range(qa, qb):
                                alpha = p_alpha[tid, q]
                                use = alpha > ZERO
                                ex = p_ex[tid, q]
                                alpha_raw = o * ex
                                al64 = np.float64(alpha)
                                one_m = np.float64(ONE - alpha)
                                t_now = p_trans[tid, q]
                                t_before = t_now / one_m
                                gdotf = p_gdf[tid, q]
                                r = p_resid[tid, q]
                                g_alpha = t_before * (gdotf - r) + p_gfin[tid, q] / one_m
                                p_resid[tid, q] = (al64 * gdotf + one_m * r) if use else (r + 0.0)
                                p_trans[tid, q] = t_before if use else (t_now + 0.0)
                                wt = al64 * t_before if use else 0.0
                                live = use & (alpha_raw <= ALPHA_MAX)
                                g_pow = g_alpha * np.float64(alpha_raw)
                                ddx = np.float64(mx - p_fx[tid, q])
                                p_term[tid, 5, q] = g_alpha * np.float64(ex) if live else 0.0
                                p_term[tid, 0, q] = -g_pow * (a64 * ddx + b64 * ddy) if live else 0.0
                                p_term[tid, 1, q] = -g_pow * (c64 * ddy + b64 * ddx) if live else 0.0
                                p_term[tid, 2, q] = -0.5 * g_pow * ddx * ddx if live else 0.0
                                p_term[tid, 3, q] = -g_pow * ddx * ddy if live else 0.0
                                p_term[tid, 4, q] = -0.5 * g_pow * ddy * ddy if live else 0.0
                                p_wt[tid, q] = wt
                            for ch in range(n_ch):
                                for q in range(qa, qb):
                                    p_term[tid, N_GEOM + ch, q] = p_gimg[tid, ch, q] * p_wt[tid, q]
                        # The entry's sums, pixel by pixel in row-major order as in the scalar
                        # kernels; unused lanes add +0.0 (which can only turn a -0.0 sum into
                        # +0.0, and the per-splat reduction starts from +0.0 anyway).
                        if n_k == 10:  # the render path: sums in registers
                            for q in range(qa, qb):
                                s0 += p_term[tid, 0, q]
                                s1 += p_term[tid, 1, q]
                                s2 += p_term[tid, 2, q]
                                s3 += p_term[tid, 3, q]
                                s4 += p_term[tid, 4, q]
                                s5 += p_term[tid, 5, q]
                                s6 += p_term[tid, 6, q]
                                s7 += p_term[tid, 7, q]
                                s8 += p_term[tid, 8, q]
                                s9 += p_term[tid, 9, q]
                        else:
                            for q in range(qa, qb):
                                for k in range(n_k):
                                    p_acc[tid, k] += p_term[tid, k, q]
                if n_k == 10:
                    p_acc[tid, 0] = s0
                    p_acc[tid, 1] = s1
                    p_acc[tid, 2] = s2
                    p_acc[tid, 3] = s3
                    p_acc[tid, 4] = s4
                    p_acc[tid, 5] = s5
                    p_acc[tid, 6] = s6
                    p_acc[tid, 7] = s7
                    p_acc[tid, 8] = s8
                    p_acc[tid, 9] = s9
                for k in range(n_k):
                    entry_grads[lo + e, k] = np.float32(p_acc[tid, k])
            hi = lo
        stats[tile, STAT_PAIRS] = lanes
        stats[tile, STAT_ENTRIES] = n_max


def backward_kernel(gdata, boxes, splat_ids, tile_offsets, grid_x, grid_y, width, height,
                    background, t_final, n_used, grad_image, grad_alpha, entry_grads, stats=None,
                    prep=None):
    """Back-to-front VJP. Writes entry_grads (M, 6 + C) f32: the gradient each tile-list entry
    receives from its tile's pixels, columns ``[mean_x, mean_y, a, b, c, opacity, features...]``.

    Per pixel it starts from the saved T_final and last contributor, recovers the
    transmittance before each splat as T / (1 − α), and carries the scalar
    ``r = g · (Σ_behind f α T + T_final·bg) / T_after`` so no per-pixel colour history is kept.
    Each entry's sums run over its pixels in row-major order, as in the scalar kernels, so the
    results are bit-identical to them. ``stats`` and ``prep`` as in :func:`forward_kernel`.
    """
    n_ch = gdata.shape[1] - N_GEOM
    n_k = N_GEOM + n_ch
    nth = numba.config.NUMBA_NUM_THREADS  # thread ids run up to the pool size
    n_tiles = grid_x * grid_y
    m = min(CHUNK, _max_list(tile_offsets))
    sc = _scratch(nth, {
        "e_geo": ((m, E_GEO), np.float32), "e_feat": ((m, n_ch), np.float32),
        "e_box": ((m, 4), np.int32), "e_ell": ((m, N_ELL), np.float64),
        "p_trans": ((TILE_PIX,), np.float64), "p_resid": ((TILE_PIX,), np.float64), "p_gfin": ((TILE_PIX,), np.float64),
        "p_last": ((TILE_PIX,), np.int32), "p_gimg": ((n_ch, TILE_PIX), np.float64),
        "p_alpha": ((TILE_PIX,), np.float32), "p_ex": ((TILE_PIX,), np.float32),
        "p_gdf": ((TILE_PIX,), np.float64), "p_wt": ((TILE_PIX,), np.float64),
        "p_term": ((n_k, TILE_PIX), np.float64), "p_acc": ((n_k,), np.float64),
        "p_fx": ((TILE_PIX,), np.float32), "p_col": ((TILE_PIX,), np.int32),
        "p_c0": ((TILE,), np.int32), "p_c1": ((TILE,), np.int32), "p_rowmax": ((TILE,), np.int32)})
    if stats is None:
        stats = np.empty((n_tiles, N_STATS), dtype=np.int64)
    pfloor, ell = _prep(gdata, width, height) if prep is None else prep
    _backward(gdata, pfloor, ell, boxes, splat_ids, tile_offsets, grid_x, grid_y, width,
              height, background, t_final, n_used, grad_image, grad_alpha, entry_grads, stats,
              **sc)


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
