"""Tile binning on the CPU with a counting sort (numba); identical output to the torch version.

The torch implementation in :mod:`trsplat.render.tiles` expands every (splat, tile) pair and
runs two stable sorts over all M pairs. Here the V splats are stably sorted by depth once
(ties keep the lower index first), then a counting sort by tile scatters each splat, in that
order, into every tile of its rectangle. Within a tile the entries are therefore ordered by
(depth, splat index), exactly what the two stable sorts produce, and the offsets are the same
prefix sums. Cost O(V log V + M) instead of O(M log M).
"""

from __future__ import annotations

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


def depth_order(depths: torch.Tensor) -> torch.Tensor:
    """Stable ascending argsort of ``depths`` (ties: lower index first), as int64 CPU tensor.

    Positive finite float32 depths (always the case after near-plane culling) are sorted by a
    radix sort of their bit patterns, which orders them exactly as their values; anything else
    falls back to ``torch.sort(stable=True)``.
    """
    d = depths.detach().cpu()
    if d.dtype == torch.float32 and d.numel() > 0 and bool(torch.all(d > 0)) and bool(torch.isfinite(d).all()):
        keys = d.contiguous().numpy().view(np.uint32)
        return torch.from_numpy(_radix_argsort_u32(keys))
    return torch.sort(d, stable=True).indices


@njit(fastmath=False, cache=True)
def _counting_sort(order, x0, x1, y0, y1, grid_x, n_tiles):
    counts = np.zeros(n_tiles + 1, dtype=np.int64)
    for i in range(order.shape[0]):
        s = order[i]
        for ty in range(y0[s], y1[s]):
            for tx in range(x0[s], x1[s]):
                counts[ty * grid_x + tx + 1] += 1
    for t in range(n_tiles):
        counts[t + 1] += counts[t]
    offsets = counts.copy()
    cursor = counts[:n_tiles].copy()
    ids = np.empty(offsets[n_tiles], dtype=np.int64)
    for i in range(order.shape[0]):
        s = order[i]
        for ty in range(y0[s], y1[s]):
            for tx in range(x0[s], x1[s]):
                t = ty * grid_x + tx
                ids[cursor[t]] = s
                cursor[t] += 1
    return ids, offsets


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


def bin_splats_counting(means2d, radii, depths, tile: int, grid_x: int, grid_y: int):
    """(splat_ids, tile_offsets) int64 CPU tensors for splats with 2D means (V, 2) and radii (V,).

    The tile rectangles are those of :func:`trsplat.render.project.tile_rect` (computed by
    :func:`tile_rects`); ``depths`` may have any float dtype (only their order matters). Returns
    None where the inputs cannot be read as plain arrays (under ``torch.func.vmap``), so the
    caller can fall back to the torch implementation.
    """
    plain = [_plain(t.detach()) for t in (means2d, radii, depths)]
    if any(t is None for t in plain):
        return None
    means2d, radii, depths = plain
    with torch._C._DisableFuncTorch():  # plain tensors from here on, even inside torch.func
        order = depth_order(depths)
        rects = tile_rects(means2d.cpu().float().contiguous().numpy(),
                           radii.cpu().to(torch.int64).contiguous().numpy(), int(tile), int(grid_x), int(grid_y))
        ids, offsets = _counting_sort(order.numpy(), *rects, int(grid_x), int(grid_x) * int(grid_y))
        return torch.from_numpy(ids), torch.from_numpy(offsets)
