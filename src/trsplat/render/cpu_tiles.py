"""Tile binning on the CPU with a counting sort (numba); identical output to the torch version.

The torch implementation in :mod:`trsplat.render.tiles` expands every (splat, tile) pair and
runs two stable sorts over all M pairs. Here the V splats are stably sorted by depth once
(ties keep the lower index first), then a counting sort by tile scatters each splat, in that
order, into every tile of its rectangle. Within a tile the entries are therefore ordered by
(depth, splat index), exactly what the two stable sorts produce, and the offsets are the same
prefix sums. Cost O(V log V + M) instead of O(M log M).

Tight culling (optional, when conics and opacities are given): a splat is only listed in the
tiles of its rectangle that its "α ≥ 1/255 is possible" ellipse actually touches
(:func:`ellipse_touches_rect`, exact and conservative in float rounding; see
``docs/cpu_performance.md``). Only (tile, splat) pairs that the compositor would skip for every
pixel are dropped, and the order of the remaining ones is unchanged, so images and gradients do
not change.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit


@njit(fastmath=False, cache=True)
def _radix_argsort_u32(keys):
    """Stable LSD radix argsort of uint32 keys (4 passes of 8 bits)."""
    n = keys.shape[0]
    order = np.arange(n).astype(np.int64)
    tmp = np.empty(n, dtype=np.int64)
    counts = np.empty(257, dtype=np.int64)
    for shift in range(0, 32, 8):
        counts[:] = 0
        for i in range(n):
            counts[((keys[i] >> shift) & 255) + 1] += 1
        if counts[1:].max() == n:  # all keys share this digit: nothing to do
            continue
        for d in range(256):
            counts[d + 1] += counts[d]
        for i in range(n):
            k = order[i]
            d = (keys[k] >> shift) & 255
            tmp[counts[d]] = k
            counts[d] += 1
        order, tmp = tmp, order
    return order


@njit(fastmath=False, cache=True)
def _all_positive_finite(values):
    for i in range(values.shape[0]):
        v = values[i]
        if not (v > 0 and v < np.inf):
            return False
    return True


def depth_order(depths: torch.Tensor) -> torch.Tensor:
    """Stable ascending argsort of ``depths`` (ties: lower index first), as int64 CPU tensor.

    Positive finite float32 depths (always the case after near-plane culling) are sorted by a
    radix sort of their bit patterns, which orders them exactly as their values; anything else
    falls back to ``torch.sort(stable=True)``.
    """
    d = depths.detach().cpu()
    if d.dtype == torch.float32 and d.numel() > 0:
        values = d.contiguous().numpy()
        if _all_positive_finite(values):  # numpy/numba, not torch: no thread-pool wake-up
            return torch.from_numpy(_radix_argsort_u32(values.view(np.uint32)))
    return torch.sort(d, stable=True).indices


@njit(fastmath=False, cache=True)
def _in_order(order, x0, x1, y0, y1):
    """The rectangles permuted into depth order (one gather, then contiguous passes)."""
    n = order.shape[0]
    r = np.empty((4, n), dtype=np.int64)
    for i in range(n):
        s = order[i]
        r[0, i] = x0[s]
        r[1, i] = x1[s]
        r[2, i] = y0[s]
        r[3, i] = y1[s]
    return r


@njit(fastmath=False, cache=True)
def _counting_sort(order, x0, x1, y0, y1, grid_x, n_tiles):
    r = _in_order(order, x0, x1, y0, y1)
    counts = np.zeros(n_tiles + 1, dtype=np.int64)
    for i in range(order.shape[0]):
        for ty in range(r[2, i], r[3, i]):
            for tx in range(r[0, i], r[1, i]):
                counts[ty * grid_x + tx + 1] += 1
    for t in range(n_tiles):
        counts[t + 1] += counts[t]
    offsets = counts.copy()
    cursor = counts[:n_tiles].copy()
    ids = np.empty(offsets[n_tiles], dtype=np.int64)
    for i in range(order.shape[0]):
        s = order[i]
        for ty in range(r[2, i], r[3, i]):
            for tx in range(r[0, i], r[1, i]):
                t = ty * grid_x + tx
                ids[cursor[t]] = s
                cursor[t] += 1
    return ids, offsets


# Safety margins of the tight culling; the same allowances as the kernels' pixel boxes
# (cpu_kernels.splat_boxes), see docs/cpu_performance.md for the derivation.
_CULL_REL = 1e-5     # float32 error of the quadratic form, relative to a·dx² + c·dy² + 2|b·dx·dy|
_CULL_LOG = 1e-5     # allowance on the log-threshold (exp / multiply rounding)
_CULL_ABS = 1e-3     # pixels
_CULL_POS = 1e-6     # relative to the coordinate magnitude (rounding of mean - pixel)
_CULL_MIN_GAP = 1e-4  # cull only conics with 1 - |b|/sqrt(ac) above this (well conditioned)
_ALPHA_MIN = 1.0 / 255.0


@njit(fastmath=False, cache=True, inline="always")
def culling_ellipse(mx, my, a, b, c, o, width, height):
    """The float64 culling ellipse of one splat for :func:`ellipse_strip_span`.

    Returns ``(A, B, C, t, m, state)``. A pixel centre p that the compositor can use for the
    splat (float32 ``power <= 0`` and ``α ≥ 1/255``) has an offset d within ``m`` (per axis) of
    ``mean − p`` with ``q(d) = A·dx² + 2B·dx·dy + C·dy² ≤ t``: A, C are the conic's diagonal
    shrunk by 2·1e-5 (so q is a lower bound of the float32 quadratic form), t = 2(ln(o / α_min)
    + 1e-5)(1 + 1e-5), m = 1e-3 px + 1e-6 of the coordinates' magnitude (docs/cpu_performance.md).
    ``state`` is 1 for such an ellipse, 0 for a splat that can never be used (o < 1/255 or NaN)
    and -1 for one that is not culled (non-finite values, or a conic that is not safely
    positive definite: |B| ≥ (1 − 1e-4)·sqrt(A·C)).
    """
    mx = np.float64(mx)
    my = np.float64(my)
    a = np.float64(a)
    b = np.float64(b)
    c = np.float64(c)
    if not (np.float32(o) >= np.float32(_ALPHA_MIN)):  # also NaN: alpha is never >= 1/255
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    o = np.float64(o)
    if not (np.isfinite(mx) and np.isfinite(my) and np.isfinite(a) and np.isfinite(b)
            and np.isfinite(c) and np.isfinite(o)):
        return 0.0, 0.0, 0.0, 0.0, 0.0, -1.0
    aa = a * (1.0 - 2.0 * _CULL_REL)
    cc = c * (1.0 - 2.0 * _CULL_REL)
    if not (aa > 0.0 and cc > 0.0 and abs(b) < math.sqrt(aa * cc) * (1.0 - _CULL_MIN_GAP)):
        return 0.0, 0.0, 0.0, 0.0, 0.0, -1.0
    t = 2.0 * (math.log(o / _ALPHA_MIN) + _CULL_LOG) * (1.0 + _CULL_REL)
    if t < 0.0:
        t = 0.0
    m = _CULL_ABS + _CULL_POS * (abs(mx) + abs(my) + width + height)
    return aa, b, cc, t, m, 1.0


@njit(fastmath=False, cache=True, inline="always")
def ellipse_strip_span(e, yl, yh):
    """x-extent [x_lo, x_hi] of the ellipse {q(x, y) ≤ t} of ``e`` (state 1) within the strip
    yl ≤ y ≤ yh; empty (x_lo > x_hi) if they do not meet.

    The ellipse meets the strip in a convex set, so a rectangle [xl, xh] × [yl, yh] meets the
    ellipse exactly when [xl, xh] meets this interval. Its right boundary
    x(y) = (−By + sqrt(At − det·y²)) / A is concave with its maximum at y = −B·x_max / C
    (x_max = sqrt(tC / det)), so the largest x in the strip is x(y) at that y clamped into the
    strip; the left boundary likewise. Widened by 1e-7 of the ellipse's size for the float64
    rounding of this evaluation.
    """
    aa, bb, cc, t, m, state = e
    det = aa * cc - bb * bb
    x_max = math.sqrt(t * cc / det)
    y_max = math.sqrt(t * aa / det)
    lo = max(yl, -y_max)
    hi = min(yh, y_max)
    if lo > hi:
        return np.inf, -np.inf
    slack = 1e-7 * (x_max + y_max)
    y_r = min(max(-bb * x_max / cc, lo), hi)
    y_l = min(max(bb * x_max / cc, lo), hi)
    x_hi = (-bb * y_r + math.sqrt(max(aa * t - det * y_r * y_r, 0.0))) / aa
    x_lo = (-bb * y_l - math.sqrt(max(aa * t - det * y_l * y_l, 0.0))) / aa
    return x_lo - slack, x_hi + slack


@njit(fastmath=False, cache=True)
def ellipse_touches_rect(e, mx, my, px0, px1, py0, py1):
    """Whether a splat with mean (mx, my) and culling ellipse ``e`` (:func:`culling_ellipse`)
    can reach a pixel centre in [px0, px1] × [py0, py1] (inclusive, pixel units)."""
    state = e[5]
    if state == 0.0:
        return False
    if state < 0.0:
        return True
    m = e[4]
    x_lo, x_hi = ellipse_strip_span(e, np.float64(my) - py1 - m, np.float64(my) - py0 + m)
    return x_lo <= np.float64(mx) - px0 + m and np.float64(mx) - px1 - m <= x_hi


@njit(fastmath=False, cache=True)
def _counting_sort_culled(order, x0, x1, y0, y1, grid_x, n_tiles, tile, width, height, means2d,
                          conics, opacities):
    """:func:`_counting_sort` keeping only the tiles of each rectangle that the splat's culling
    ellipse touches (:func:`ellipse_touches_rect`, evaluated one tile row at a time).

    The first pass visits the splats in index order (sequential reads) and writes each splat's
    kept tiles to a flat buffer, counting them per tile; the second scatters the splat ids in
    depth order by those counts, reading only the kept tiles. Serial: a ``prange`` over splats
    cost more CPU time in thread start-up and spinning than it saved (docs/cpu_performance.md).
    """
    n = x0.shape[0]
    total = 0
    for s in range(n):
        total += max(x1[s] - x0[s], 0) * max(y1[s] - y0[s], 0)
    kept = np.empty(total, dtype=np.int32)
    first = np.empty(n + 1, dtype=np.int64)
    counts = np.zeros(n_tiles + 1, dtype=np.int64)
    k = 0
    for s in range(n):
        first[s] = k
        if not (x1[s] > x0[s] and y1[s] > y0[s]):
            continue
        mx = np.float64(means2d[s, 0])
        my = np.float64(means2d[s, 1])
        e = culling_ellipse(mx, my, conics[s, 0], conics[s, 1], conics[s, 2], opacities[s],
                            width, height)
        state = e[5]
        m = e[4]
        if state == 0.0:  # the splat can never be used: no tile
            continue
        for ty in range(y0[s], y1[s]):
            py0 = ty * tile
            py1 = min(py0 + tile, height) - 1
            if state > 0.0:
                x_lo, x_hi = ellipse_strip_span(e, my - py1 - m, my - py0 + m)
            else:
                x_lo, x_hi = -np.inf, np.inf
            for tx in range(x0[s], x1[s]):
                px0 = tx * tile
                px1 = min(px0 + tile, width) - 1
                if (x_lo <= mx - px0 + m) and (mx - px1 - m <= x_hi):
                    t = ty * grid_x + tx
                    kept[k] = t
                    counts[t + 1] += 1
                    k += 1
    first[n] = k
    for t in range(n_tiles):
        counts[t + 1] += counts[t]
    cursor = counts[:n_tiles].copy()
    ids = np.empty(counts[n_tiles], dtype=np.int64)
    for i in range(order.shape[0]):
        s = order[i]
        for j in range(first[s], first[s + 1]):
            t = kept[j]
            ids[cursor[t]] = s
            cursor[t] += 1
    return ids, counts


@njit(fastmath=False, cache=True)
def tile_rects(means2d, radii, tile, grid_x, grid_y):
    """:func:`trsplat.render.project.tile_rect` in numba, with the same float32 arithmetic.

    ``means2d`` (V, 2) float32, ``radii`` (V,) int64; returns int64 ``x0, x1, y0, y1``. A
    non-finite mean gets an empty rectangle (torch's int conversion of NaN is undefined).
    """
    n = means2d.shape[0]
    x0 = np.empty(n, dtype=np.int64)
    x1 = np.empty(n, dtype=np.int64)
    y0 = np.empty(n, dtype=np.int64)
    y1 = np.empty(n, dtype=np.int64)
    t = np.float32(tile)
    one = np.float32(1.0)
    for i in range(n):
        mx, my, r = means2d[i, 0], means2d[i, 1], np.float32(radii[i])
        if not (np.isfinite(mx) and np.isfinite(my)):
            x0[i] = x1[i] = y0[i] = y1[i] = 0
            continue
        x0[i] = np.int64(min(max(np.trunc((mx - r) / t), 0.0), grid_x))
        x1[i] = np.int64(min(max(np.trunc((mx + r + t - one) / t), 0.0), grid_x))
        y0[i] = np.int64(min(max(np.trunc((my - r) / t), 0.0), grid_y))
        y1[i] = np.int64(min(max(np.trunc((my + r + t - one) / t), 0.0), grid_y))
    return x0, x1, y0, y1


def _plain(t: torch.Tensor) -> torch.Tensor | None:
    """The plain tensor under torch.func (grad / jvp) wrappers; None under vmap."""
    ft = torch._C._functorch
    while ft.is_functorch_wrapped_tensor(t):
        if ft.is_batchedtensor(t):
            return None
        t = ft.get_unwrapped(t)
    return t


def bin_splats_counting(means2d, radii, depths, tile: int, grid_x: int, grid_y: int,
                        conics=None, opacities=None, width: int | None = None,
                        height: int | None = None):
    """(splat_ids, tile_offsets) int64 CPU tensors for splats with 2D means (V, 2) and radii (V,).

    The tile rectangles are those of :func:`trsplat.render.project.tile_rect` (computed by
    :func:`tile_rects`); ``depths`` may have any float dtype (only their order matters). With
    ``conics`` (V, 3), ``opacities`` (V,) and the image size, each splat keeps only the tiles of
    its rectangle that its α ≥ 1/255 ellipse touches (tight culling, see the module docstring).
    Returns None where the inputs cannot be read as plain arrays (under ``torch.func.vmap``), so
    the caller can fall back to the torch implementation.
    """
    cull = conics is not None and opacities is not None and width is not None and height is not None
    tensors = (means2d, radii, depths) + ((conics, opacities) if cull else ())
    plain = [_plain(t.detach()) for t in tensors]
    if any(t is None for t in plain):
        return None
    means2d, radii, depths = plain[:3]
    with torch._C._DisableFuncTorch():  # plain tensors from here on, even inside torch.func
        order = depth_order(depths)
        m32 = means2d.cpu().float().contiguous().numpy()
        rects = tile_rects(m32, radii.cpu().to(torch.int64).contiguous().numpy(), int(tile),
                           int(grid_x), int(grid_y))
        n_tiles = int(grid_x) * int(grid_y)
        if cull:
            con = plain[3].cpu().float().contiguous().numpy()
            opa = plain[4].cpu().float().contiguous().numpy()
            ids, offsets = _counting_sort_culled(order.numpy(), *rects, int(grid_x), n_tiles,
                                                 int(tile), int(width), int(height), m32, con, opa)
        else:
            ids, offsets = _counting_sort(order.numpy(), *rects, int(grid_x), n_tiles)
        return torch.from_numpy(ids), torch.from_numpy(offsets)
