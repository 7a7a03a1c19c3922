"""Reference front-to-back alpha compositing in pure torch: the correctness oracle.

Implements INRIA's ``renderCUDA`` loop (conventions: ``docs/training.md``) without a loop over
Gaussians: for a batch of tiles it evaluates every (pixel, splat) pair of the tile, applies the
skip rules (power > 0, α < 1/255) and the early stop (the first splat that would bring the
transmittance below 1e-4 and every later one are dropped) with an exclusive cumulative product.
Because it is ordinary torch, reverse mode, forward mode and dense Jacobians come for free.

Memory is bounded by processing tiles in batches of similar list length, at most
``max_pairs`` (pixel, splat) pairs at a time.
"""

from __future__ import annotations

import torch

from trsplat.gaussians import ALPHA_MIN
from trsplat.render.project import TILE_SIZE
from trsplat.render.tiles import TileBins

ALPHA_MAX = 0.99
T_MIN = 1e-4


def composite_reference(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    features: torch.Tensor,
    opacities: torch.Tensor,
    bins: TileBins,
    width: int,
    height: int,
    background: torch.Tensor,
    max_pairs: int = 1 << 22,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite V splats into an image.

    Args:
        means2d: (V, 2) pixel-index coordinates.
        conics: (V, 3) inverse 2D covariances (a, b, c).
        features: (V, C) per-splat values to blend (RGB, depth, ...).
        opacities: (V,) in (0, 1).
        bins: sorted per-tile splat lists.
        background: (C,) value added with the final transmittance.
    Returns:
        image (H, W, C) = Σ f·α·T + T_final·background, and alpha (H, W) = 1 − T_final.
    """
    n_ch = features.shape[1]
    counts = bins.tile_offsets[1:] - bins.tile_offsets[:-1]
    tiles_by_len = torch.argsort(counts, descending=True)
    tiles_by_len = tiles_by_len[counts[tiles_by_len] > 0]
    pix_local = torch.arange(TILE_SIZE * TILE_SIZE, device=means2d.device)
    local_x, local_y = pix_local % TILE_SIZE, pix_local // TILE_SIZE

    pixel_chunks, value_chunks, alpha_chunks = [], [], []
    start = 0
    n_busy = len(tiles_by_len)
    while start < n_busy:
        k_max = int(counts[tiles_by_len[start]])
        n_batch = max(1, min(n_busy - start, max_pairs // (TILE_SIZE * TILE_SIZE * k_max)))
        tiles = tiles_by_len[start:start + n_batch]
        start += n_batch

        ks = torch.arange(k_max, device=means2d.device)
        valid = ks[None, :] < counts[tiles][:, None]                       # (B, K)
        slot = (bins.tile_offsets[tiles][:, None] + ks[None, :]).clamp(max=len(bins.splat_ids) - 1)
        sid = bins.splat_ids[slot]                                          # (B, K)

        px = ((tiles % bins.grid_x) * TILE_SIZE)[:, None] + local_x[None, :]   # (B, P)
        py = ((tiles // bins.grid_x) * TILE_SIZE)[:, None] + local_y[None, :]
        dx = means2d[sid][:, None, :, 0] - px[:, :, None].to(means2d.dtype)   # (B, P, K)
        dy = means2d[sid][:, None, :, 1] - py[:, :, None].to(means2d.dtype)
        con = conics[sid][:, None]                                           # (B, 1, K, 3)
        power = -0.5 * (con[..., 0] * dx * dx + con[..., 2] * dy * dy) - con[..., 1] * dx * dy
        alpha = torch.clamp_max(opacities[sid][:, None, :] * torch.exp(power), ALPHA_MAX)
        with torch.no_grad():
            used = valid[:, None, :] & (power <= 0) & (alpha >= ALPHA_MIN)
        alpha = torch.where(used, alpha, torch.zeros_like(alpha))
        one_minus = 1.0 - alpha
        with torch.no_grad():
            # test_T of each splat; T never increases, so "kept" is a prefix of each pixel's list.
            kept = torch.cumprod(one_minus, dim=-1) >= T_MIN
        one_minus = torch.where(kept, one_minus, torch.ones_like(one_minus))
        trans_incl = torch.cumprod(one_minus, dim=-1)
        trans_before = torch.cat([torch.ones_like(trans_incl[..., :1]), trans_incl[..., :-1]], -1)
        weight = torch.where(kept, alpha * trans_before, torch.zeros_like(alpha))   # (B, P, K)
        value = torch.bmm(weight, features[sid])                          # (B, P, C)
        t_final = trans_incl[..., -1]
        value = value + t_final[..., None] * background
        inside = (px < width) & (py < height)
        pixel_chunks.append((py * width + px)[inside])
        value_chunks.append(value[inside])
        alpha_chunks.append((1.0 - t_final)[inside])

    image = background.to(features.dtype).expand(height * width, n_ch)
    alpha_img = torch.zeros(height * width, dtype=features.dtype, device=features.device)
    if pixel_chunks:
        pix = torch.cat(pixel_chunks)
        image = image.index_put((pix,), torch.cat(value_chunks))
        alpha_img = alpha_img.index_put((pix,), torch.cat(alpha_chunks))
    return image.reshape(height, width, n_ch), alpha_img.reshape(height, width)
