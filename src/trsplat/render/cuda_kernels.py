"""numba-cuda kernels of the ``cuda`` compositing backend (forward, JVP, VJP).

Importing this module imports ``numba.cuda``; :mod:`trsplat.render.composite_cuda` only does so
after checking that a GPU (or numba's CUDA simulator, ``NUMBA_ENABLE_CUDASIM=1``) is usable.

All three kernels share INRIA's ``renderCUDA`` structure (docs/backends_cuda.md):

* one block of 16x16 threads per 16x16 tile, one thread per pixel (threads of pixels outside
  the image stay in the loops, so barriers and warp collectives always see the full block);
* the tile's depth-sorted splat list is processed in batches of 256 entries: each thread loads
  one entry (splat id, mean, conic, opacity; the JVP also its six tangents) into shared memory,
  ``syncthreads``, then every thread walks the batch for its pixel. Features (and feature
  tangents) are read from global memory, as INRIA reads colours (they are L1/L2 hits: all 256
  threads read the same row);
* forward and JVP stop a pixel at the T < 1e-4 test and the block as soon as every pixel is done
  (``syncthreads_count``), exactly as INRIA;
* the VJP walks each tile's list back to front, starting at the largest "last contributor" of
  the block, and recovers each pixel's transmittance before a splat as T / (1 − α) from the
  saved final transmittance (3DGS's backward). It carries the scalar
  ``r = g · (Σ_behind f α T + T_final·bg) / T_after`` instead of per-channel colour history.

Per-(pixel, splat) decisions use the reference compositor's float32 operations in the same
order: power = −½(a·dx² + c·dy²) − b·dx·dy with dx = mean − pixel, skip unless power ≤ 0,
α = min(0.99, o·exp(power)) (NaN stays NaN and is skipped), skip unless α ≥ 1/255, stop when
T·(1 − α) < 1e-4. State is float32, as INRIA (not float64 as in the ``cpu`` backend: FP64 is
slow on consumer GPUs), so results match the reference to float32 rounding, and a decision
that sits within an ulp or two of a threshold can flip (``docs/backends_cuda.md``).

Gradient accumulation (VJP): every (pixel, splat) pair produces 6 + C partial derivatives
``[mean_x, mean_y, conic_a, conic_b, conic_c, opacity, features...]``. With
``warp_reduce=True`` (real GPUs) they are summed over the 32 pixels of a warp with
``shfl_down_sync`` (skipped when no lane of the warp has a contribution, ``any_sync``) and lane 0
adds the warp's sum to the per-splat gradient with one ``atomic.add``. numba's simulator has no
warp intrinsics, so there (``warp_reduce=False``) every pixel adds its own terms atomically
(INRIA's scheme). Either way the order of the float32 atomic additions depends on the
scheduling: per-splat gradients are **not bitwise deterministic** on a GPU (differences are
float32 rounding, ~1e-7 relative).

Kernels are specialised on the channel count C (a compile-time constant: per-thread
accumulators live in registers) and compiled lazily by numba on first use (:func:`kernels`).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import numpy as np
from numba import cuda, float32, int32

TILE = 16
BLOCK = TILE * TILE  # threads per block = entries per shared-memory batch
N_GEOM = 6  # mean x, mean y, conic a, b, c, opacity
ALPHA_MAX = np.float32(0.99)
ALPHA_MIN = np.float32(1.0 / 255.0)
T_MIN = np.float32(1e-4)
HALF = np.float32(0.5)
ONE = np.float32(1.0)
ZERO = np.float32(0.0)
FULL_MASK = 0xFFFFFFFF
WARP = 32


@functools.lru_cache(maxsize=None)
def kernels(n_ch: int, warp_reduce: bool) -> SimpleNamespace:
    """The ``forward``, ``jvp`` and ``backward`` kernels for ``n_ch`` feature channels.

    Launch configuration of all three: grid ``(grid_x, grid_y)``, block ``(16, 16)``.
    ``warp_reduce`` selects the VJP's gradient accumulation (see the module docstring); it must
    be False under the simulator, which has no warp intrinsics.
    """
    n_k = N_GEOM + n_ch

    @cuda.jit
    def forward(means2d, conics, opacities, features, splat_ids, tile_offsets, grid_x, width,
                height, background, image, t_final, n_used):
        """image (H, W, C) = Σ f·α·T + T_final·bg; t_final (H, W) f32; n_used (H, W) i32 the
        1-based position in the tile list of the pixel's last contributor (0: none)."""
        s_id = cuda.shared.array(BLOCK, int32)
        s_geo = cuda.shared.array((BLOCK, N_GEOM), float32)
        acc = cuda.local.array(n_ch, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TILE + tx
        px = cuda.blockIdx.x * TILE + tx
        py = cuda.blockIdx.y * TILE + ty
        tile = cuda.blockIdx.y * grid_x + cuda.blockIdx.x
        inside = px < width and py < height
        fx = np.float32(px)
        fy = np.float32(py)
        start = tile_offsets[tile]
        end = tile_offsets[tile + 1]
        for ch in range(n_ch):
            acc[ch] = ZERO
        trans = ONE
        last = np.int32(0)
        done = not inside
        n_batches = (end - start + BLOCK - 1) // BLOCK
        for bt in range(n_batches):
            # block-wide early exit; the barrier also keeps the previous batch's shared data alive
            if cuda.syncthreads_count(1 if done else 0) == BLOCK:
                break
            base = start + bt * BLOCK
            j = base + tid
            if j < end:
                g = splat_ids[j]
                s_id[tid] = g
                s_geo[tid, 0] = means2d[g, 0]
                s_geo[tid, 1] = means2d[g, 1]
                s_geo[tid, 2] = conics[g, 0]
                s_geo[tid, 3] = conics[g, 1]
                s_geo[tid, 4] = conics[g, 2]
                s_geo[tid, 5] = opacities[g]
            cuda.syncthreads()
            n_here = min(BLOCK, end - base)
            if not done:
                for k in range(n_here):
                    dx = s_geo[k, 0] - fx
                    dy = s_geo[k, 1] - fy
                    power = (-HALF * (s_geo[k, 2] * dx * dx + s_geo[k, 4] * dy * dy)
                             - s_geo[k, 3] * dx * dy)
                    if not (power <= ZERO):
                        continue
                    alpha = s_geo[k, 5] * np.float32(math.exp(power))
                    if alpha > ALPHA_MAX:
                        alpha = ALPHA_MAX
                    if not (alpha >= ALPHA_MIN):
                        continue
                    test_t = trans * (ONE - alpha)
                    if test_t < T_MIN:
                        done = True
                        break
                    w = alpha * trans
                    g = s_id[k]
                    for ch in range(n_ch):
                        acc[ch] += features[g, ch] * w
                    trans = test_t
                    last = np.int32(bt * BLOCK + k + 1)
        if inside:
            for ch in range(n_ch):
                image[py, px, ch] = acc[ch] + trans * background[ch]
            t_final[py, px] = trans
            n_used[py, px] = last

    @cuda.jit
    def jvp(means2d, conics, opacities, features, d_means2d, d_conics, d_opacities, d_features,
            splat_ids, tile_offsets, grid_x, width, height, background, image, t_final, n_used,
            image_dot, alpha_dot):
        """The forward kernel that also pushes tangents: writes the primal outputs of
        ``forward`` and image_dot (H, W, C), alpha_dot (H, W) (without the background tangent,
        which the caller adds as T_final·ḃg). α's tangent is zero where α is clamped at 0.99,
        as ``torch.clamp_max``."""
        s_id = cuda.shared.array(BLOCK, int32)
        s_geo = cuda.shared.array((BLOCK, N_GEOM), float32)
        s_dgeo = cuda.shared.array((BLOCK, N_GEOM), float32)
        acc = cuda.local.array(n_ch, float32)
        acc_d = cuda.local.array(n_ch, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TILE + tx
        px = cuda.blockIdx.x * TILE + tx
        py = cuda.blockIdx.y * TILE + ty
        tile = cuda.blockIdx.y * grid_x + cuda.blockIdx.x
        inside = px < width and py < height
        fx = np.float32(px)
        fy = np.float32(py)
        start = tile_offsets[tile]
        end = tile_offsets[tile + 1]
        for ch in range(n_ch):
            acc[ch] = ZERO
            acc_d[ch] = ZERO
        trans = ONE
        trans_d = ZERO
        last = np.int32(0)
        done = not inside
        n_batches = (end - start + BLOCK - 1) // BLOCK
        for bt in range(n_batches):
            if cuda.syncthreads_count(1 if done else 0) == BLOCK:
                break
            base = start + bt * BLOCK
            j = base + tid
            if j < end:
                g = splat_ids[j]
                s_id[tid] = g
                s_geo[tid, 0] = means2d[g, 0]
                s_geo[tid, 1] = means2d[g, 1]
                s_geo[tid, 2] = conics[g, 0]
                s_geo[tid, 3] = conics[g, 1]
                s_geo[tid, 4] = conics[g, 2]
                s_geo[tid, 5] = opacities[g]
                s_dgeo[tid, 0] = d_means2d[g, 0]
                s_dgeo[tid, 1] = d_means2d[g, 1]
                s_dgeo[tid, 2] = d_conics[g, 0]
                s_dgeo[tid, 3] = d_conics[g, 1]
                s_dgeo[tid, 4] = d_conics[g, 2]
                s_dgeo[tid, 5] = d_opacities[g]
            cuda.syncthreads()
            n_here = min(BLOCK, end - base)
            if not done:
                for k in range(n_here):
                    dx = s_geo[k, 0] - fx
                    dy = s_geo[k, 1] - fy
                    a = s_geo[k, 2]
                    b = s_geo[k, 3]
                    c = s_geo[k, 4]
                    power = -HALF * (a * dx * dx + c * dy * dy) - b * dx * dy
                    if not (power <= ZERO):
                        continue
                    ex = np.float32(math.exp(power))
                    alpha_raw = s_geo[k, 5] * ex
                    alpha = alpha_raw
                    if alpha > ALPHA_MAX:
                        alpha = ALPHA_MAX
                    if not (alpha >= ALPHA_MIN):
                        continue
                    test_t = trans * (ONE - alpha)
                    if test_t < T_MIN:
                        done = True
                        break
                    if alpha_raw > ALPHA_MAX:
                        al_d = ZERO
                    else:
                        pw_d = (-(a * dx + b * dy) * s_dgeo[k, 0] - (c * dy + b * dx) * s_dgeo[k, 1]
                                - HALF * dx * dx * s_dgeo[k, 2] - dx * dy * s_dgeo[k, 3]
                                - HALF * dy * dy * s_dgeo[k, 4])
                        al_d = ex * s_dgeo[k, 5] + alpha_raw * pw_d
                    w = alpha * trans
                    w_d = al_d * trans + alpha * trans_d
                    g = s_id[k]
                    for ch in range(n_ch):
                        f = features[g, ch]
                        acc[ch] += f * w
                        acc_d[ch] += d_features[g, ch] * w + f * w_d
                    trans_d = trans_d * (ONE - alpha) - trans * al_d
                    trans = test_t
                    last = np.int32(bt * BLOCK + k + 1)
        if inside:
            for ch in range(n_ch):
                image[py, px, ch] = acc[ch] + trans * background[ch]
                image_dot[py, px, ch] = acc_d[ch] + trans_d * background[ch]
            t_final[py, px] = trans
            n_used[py, px] = last
            alpha_dot[py, px] = -trans_d

    @cuda.jit
    def backward(means2d, conics, opacities, features, splat_ids, tile_offsets, grid_x, width,
                 height, background, t_final, n_used, grad_image, grad_alpha, grads):
        """Back-to-front VJP. Adds into grads (V, 6 + C) f32 (zero-initialised by the caller),
        columns ``[mean_x, mean_y, conic_a, conic_b, conic_c, opacity, features...]``."""
        s_id = cuda.shared.array(BLOCK, int32)
        s_geo = cuda.shared.array((BLOCK, N_GEOM), float32)
        s_max = cuda.shared.array(1, int32)
        gimg = cuda.local.array(n_ch, float32)
        vals = cuda.local.array(n_k, float32)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TILE + tx
        lane = tid % WARP
        px = cuda.blockIdx.x * TILE + tx
        py = cuda.blockIdx.y * TILE + ty
        tile = cuda.blockIdx.y * grid_x + cuda.blockIdx.x
        inside = px < width and py < height
        fx = np.float32(px)
        fy = np.float32(py)
        trans = ONE
        resid = ZERO  # g · (colour behind incl. background) / T_after
        gfin = ZERO   # grad_alpha · T_final
        last = np.int32(0)
        for ch in range(n_ch):
            gimg[ch] = ZERO
        if inside:
            trans = t_final[py, px]
            last = n_used[py, px]
            for ch in range(n_ch):
                gv = grad_image[py, px, ch]
                gimg[ch] = gv
                resid += gv * background[ch]
            gfin = grad_alpha[py, px] * trans
        if tid == 0:
            s_max[0] = 0
        cuda.syncthreads()
        cuda.atomic.max(s_max, 0, last)
        cuda.syncthreads()
        n_max = s_max[0]
        start = tile_offsets[tile]
        n_batches = (n_max + BLOCK - 1) // BLOCK
        for bt in range(n_batches):
            hi = n_max - bt * BLOCK  # this batch covers list positions [lo, hi), back to front
            lo = max(hi - BLOCK, 0)
            cuda.syncthreads()  # everyone is done with the previous batch
            kk = hi - 1 - tid
            if kk >= lo:
                g = splat_ids[start + kk]
                s_id[tid] = g
                s_geo[tid, 0] = means2d[g, 0]
                s_geo[tid, 1] = means2d[g, 1]
                s_geo[tid, 2] = conics[g, 0]
                s_geo[tid, 3] = conics[g, 1]
                s_geo[tid, 4] = conics[g, 2]
                s_geo[tid, 5] = opacities[g]
            cuda.syncthreads()
            for q in range(hi - lo):  # block-uniform loop: warp collectives below are safe
                jj = hi - 1 - q
                g = s_id[q]
                valid = False
                for k in range(n_k):
                    vals[k] = ZERO
                if jj < last:
                    dx = s_geo[q, 0] - fx
                    dy = s_geo[q, 1] - fy
                    a = s_geo[q, 2]
                    b = s_geo[q, 3]
                    c = s_geo[q, 4]
                    power = -HALF * (a * dx * dx + c * dy * dy) - b * dx * dy
                    if power <= ZERO:
                        ex = np.float32(math.exp(power))
                        alpha_raw = s_geo[q, 5] * ex
                        alpha = alpha_raw
                        if alpha > ALPHA_MAX:
                            alpha = ALPHA_MAX
                        # every splat before the last contributor that passes the skip tests
                        # was composited (the T stop ends a prefix), so no T test here
                        if alpha >= ALPHA_MIN:
                            valid = True
                            one_m = ONE - alpha
                            t_before = trans / one_m
                            wt = alpha * t_before
                            gdotf = ZERO
                            for ch in range(n_ch):
                                gv = gimg[ch]
                                vals[N_GEOM + ch] = gv * wt
                                gdotf += gv * features[g, ch]
                            g_alpha = t_before * (gdotf - resid) + gfin / one_m
                            resid = alpha * gdotf + one_m * resid
                            trans = t_before
                            if not (alpha_raw > ALPHA_MAX):
                                g_pow = g_alpha * alpha_raw
                                vals[0] = -g_pow * (a * dx + b * dy)
                                vals[1] = -g_pow * (c * dy + b * dx)
                                vals[2] = -HALF * g_pow * dx * dx
                                vals[3] = -g_pow * dx * dy
                                vals[4] = -HALF * g_pow * dy * dy
                                vals[5] = g_alpha * ex
                if warp_reduce:
                    if cuda.any_sync(FULL_MASK, valid):
                        for k in range(n_k):
                            v = vals[k]
                            v += cuda.shfl_down_sync(FULL_MASK, v, 16)
                            v += cuda.shfl_down_sync(FULL_MASK, v, 8)
                            v += cuda.shfl_down_sync(FULL_MASK, v, 4)
                            v += cuda.shfl_down_sync(FULL_MASK, v, 2)
                            v += cuda.shfl_down_sync(FULL_MASK, v, 1)
                            if lane == 0:
                                cuda.atomic.add(grads, (g, k), v)
                elif valid:
                    for k in range(n_k):
                        cuda.atomic.add(grads, (g, k), vals[k])

    return SimpleNamespace(forward=forward, jvp=jvp, backward=backward, n_ch=n_ch,
                           warp_reduce=warp_reduce)
