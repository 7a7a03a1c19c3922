"""Tile/Gaussian intersections and the per-tile depth sort (no gradients: piecewise constant).

Matches INRIA's ``duplicateWithKeys`` + stable radix sort: every splat is listed in each 16x16
tile its rectangle touches, and each tile's list is sorted front to back by depth, ties going to
the lower splat index.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trsplat.render.project import TILE_SIZE, tile_rect

try:
    from trsplat.render.cpu_tiles import bin_splats_counting as _counting
except ImportError:  # numba missing: torch implementation only
    _counting = None


@dataclass
class TileBins:
    """Sorted tile lists.

    Attributes:
        splat_ids: (M,) int64 indices into the projected splats, grouped by tile, front to back.
        tile_offsets: (T + 1,) int64; tile t owns ``splat_ids[tile_offsets[t]:tile_offsets[t+1]]``.
        grid_x, grid_y: number of tiles along x and y (T = grid_x · grid_y).
    """

    splat_ids: torch.Tensor
    tile_offsets: torch.Tensor
    grid_x: int
    grid_y: int


@torch.no_grad()
def bin_splats(
    means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, width: int, height: int,
    conics: torch.Tensor | None = None, opacities: torch.Tensor | None = None,
) -> TileBins:
    """Build the sorted per-tile splat lists for splats with 2D means (V, 2), radii (V,), depths (V,).

    On the CPU this uses the O(V log V + M) counting sort of :mod:`trsplat.render.cpu_tiles`
    (identical output); elsewhere, or without numba, the torch version below. With ``conics``
    (V, 3) and ``opacities`` (V,), the CPU path also drops the tiles of a splat's rectangle that
    its α ≥ 1/255 ellipse cannot reach (tight culling: the compositor would skip every pixel of
    such a pair, so images and gradients are unchanged); other devices ignore them.
    """
    device = means2d.device
    grid_x = (width + TILE_SIZE - 1) // TILE_SIZE
    grid_y = (height + TILE_SIZE - 1) // TILE_SIZE
    if device.type == "cpu" and _counting is not None:
        found = _counting(means2d, radii, depths, TILE_SIZE, grid_x, grid_y, conics, opacities,
                          width, height)
        if found is not None:
            return TileBins(found[0], found[1], grid_x, grid_y)
    x0, x1, y0, y1 = tile_rect(means2d, radii, width, height)
    return _bin_splats_torch(x0, x1, y0, y1, depths, grid_x, grid_y)


def _bin_splats_torch(x0, x1, y0, y1, depths, grid_x: int, grid_y: int) -> TileBins:
    """Expand every (splat, tile) pair, then two stable sorts (by depth, then by tile)."""
    device = x0.device
    n_tiles = grid_x * grid_y
    w = (x1 - x0).clamp(min=0)
    counts = w * (y1 - y0).clamp(min=0)
    total = int(counts.sum())
    splat = torch.repeat_interleave(torch.arange(len(counts), device=device), counts)
    start = torch.cumsum(counts, 0) - counts
    local = torch.arange(total, device=device) - start[splat]
    tile = (y0[splat] + local // w[splat]) * grid_x + x0[splat] + local % w[splat]
    # Stable sorts: by depth (ties keep ascending splat index), then by tile.
    order = torch.sort(depths.detach()[splat], stable=True).indices
    order = order[torch.sort(tile[order], stable=True).indices]
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=device)
    offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=n_tiles), 0)
    return TileBins(splat[order], offsets, grid_x, grid_y)
