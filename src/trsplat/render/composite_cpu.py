"""Native CPU compositing backend: numba kernels wrapped in a ``torch.autograd.Function``.

:func:`composite_cpu` has the signature and the semantics of
:func:`trsplat.render.composite_reference.composite_reference` (INRIA's ``renderCUDA`` loop,
``3dgs-conventions.md`` §6) and supports

* reverse mode: ``backward`` is a back-to-front VJP that recomputes each pixel's history from
  the final transmittance and the last contributor saved by the forward pass (3DGS style);
* forward mode: ``jvp`` (``torch.autograd.forward_ad`` and ``torch.func.jvp``); a JVP kernel
  pushes tangents through the same loop and returns the primal in the same pass;
* ``torch.func.vjp`` / ``torch.func.grad`` / ``torch.func.jvp`` (setup_context-style Function);
  no double backward and no ``vmap`` (they raise);
* the JVP-then-backward pattern of the trust-region optimizer: under
  ``forward_ad.dual_level()`` render with dual inputs, then ``primal.backward(tangent)``.

With ``torch.autograd.forward_ad`` dual inputs, the wrapper sees the tangents before the
Function runs and computes primal and tangent in one fused pass (the Function's ``forward``
then only hands back the precomputed primal). Under ``torch.func.jvp`` the tangents are not
visible to the wrapper, so ``forward`` and the JVP kernel both run (correct, ~2x the work).

Dtypes and devices: inputs are converted to contiguous float32 on the CPU (the conversion is
differentiable) and the outputs are returned in ``features``' dtype on its device. Float64
inputs are an exception: they fall back to the float64 ``reference`` compositor, so dense
Jacobian / gradcheck style tests keep double precision.

Kernel design, tolerances and benchmarks: ``docs/backends_cpu.md``; kernels:
:mod:`trsplat.render.cpu_kernels`.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

from trsplat.render import cpu_kernels as K
from trsplat.render import composite_autograd as glue
from trsplat.render.composite_reference import composite_reference
from trsplat.render.tiles import TileBins

__all__ = ["composite_cpu"]


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _pack(means2d, conics, opacities, features) -> np.ndarray:
    """(V, 6 + C) float32 array [mx, my, a, b, c, o, f...] (see cpu_kernels)."""
    v = features.shape[0]
    out = torch.empty((v, K.N_GEOM + features.shape[1]), dtype=torch.float32)
    out[:, 0:2] = means2d.detach()
    out[:, 2:5] = conics.detach()
    out[:, 5] = opacities.detach()
    out[:, 6:] = features.detach()
    return out.numpy()


def _pack_tangents(tangents, like, n_ch) -> np.ndarray:
    """Pack (means2d, conics, opacities, features) tangents; None means zero."""
    v = like.shape[0]
    out = torch.zeros((v, K.N_GEOM + n_ch), dtype=torch.float32)
    dm, dc, do, df = tangents
    if dm is not None:
        out[:, 0:2] = dm.detach()
    if dc is not None:
        out[:, 2:5] = dc.detach()
    if do is not None:
        out[:, 5] = do.detach()
    if df is not None:
        out[:, 6:] = df.detach()
    return out.numpy()


def _ids(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.int64).contiguous().numpy()


def _boxes(gdata: np.ndarray, width: int, height: int) -> np.ndarray:
    boxes = np.empty((gdata.shape[0], 4), dtype=np.int32)
    if gdata.shape[0]:
        K.splat_boxes(gdata, width, height, boxes)
    return boxes


def _run_forward(gdata, sid, offsets, gx, gy, width, height, bg):
    boxes = _boxes(gdata, width, height)
    n_ch = gdata.shape[1] - K.N_GEOM
    image = np.empty((height, width, n_ch), dtype=np.float32)
    t_final = np.empty((height, width), dtype=np.float64)
    n_used = np.empty((height, width), dtype=np.int32)
    K.run_parallel(K.forward_kernel, gdata, boxes, sid, offsets, gx, gy, width, height, bg,
                   image, t_final, n_used)
    return image, t_final, n_used


def _run_jvp(gdata, tdata, sid, offsets, gx, gy, width, height, bg):
    boxes = _boxes(gdata, width, height)
    n_ch = gdata.shape[1] - K.N_GEOM
    image = np.empty((height, width, n_ch), dtype=np.float32)
    t_final = np.empty((height, width), dtype=np.float64)
    n_used = np.empty((height, width), dtype=np.int32)
    image_dot = np.empty((height, width, n_ch), dtype=np.float32)
    alpha_dot = np.empty((height, width), dtype=np.float32)
    K.run_parallel(K.jvp_kernel, gdata, tdata, boxes, sid, offsets, gx, gy, width, height, bg,
                   image, t_final, n_used, image_dot, alpha_dot)
    return image, t_final, n_used, image_dot, alpha_dot


def _outputs(image, t_final):
    img = torch.from_numpy(image)
    tf = torch.from_numpy(t_final)
    alpha = 1.0 - tf.to(torch.float32)
    return img, alpha, tf


def _tangent_outputs(image_dot, alpha_dot, t_final, bg_dot):
    img_d = torch.from_numpy(image_dot)
    if bg_dot is not None:
        img_d = img_d + t_final.to(torch.float32)[..., None] * bg_dot.detach().to(torch.float32)
    return img_d, torch.from_numpy(alpha_dot)


class _CompositeCPU(torch.autograd.Function):
    """Inputs are float32 CPU tensors; see :func:`composite_cpu`."""

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                grid_x, grid_y, width, height, fused):
        if fused is not None:
            return fused.primal
        gdata = _pack(means2d, conics, opacities, features)
        image, t_final, n_used = _run_forward(
            gdata, _ids(splat_ids), _ids(tile_offsets), grid_x, grid_y, width, height,
            _np32(background))
        img, alpha, tf = _outputs(image, t_final)
        return img, alpha, tf, torch.from_numpy(n_used)

    @staticmethod
    def setup_context(ctx, inputs, output):
        glue.setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, g_image, g_alpha, _g_t, _g_n):
        return glue.backward(ctx, g_image, g_alpha, _CompositeCPUVJP)

    @staticmethod
    def jvp(ctx, dm, dc, df, do, dbg, *_rest):
        return glue.jvp(ctx, dm, dc, df, do, dbg, _CompositeCPUJVP)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise NotImplementedError("the cpu compositing backend does not support vmap")


class _CompositeCPUVJP(torch.autograd.Function):
    """The VJP kernel as its own Function, so torch.func transforms see plain tensors.

    Its own backward (double backward of compositing) is not implemented.
    """

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                t_final, n_used, g_image, g_alpha, meta):
        grid_x, grid_y, width, height = meta
        gdata = _pack(means2d, conics, opacities, features)
        sid = _ids(splat_ids)
        boxes = _boxes(gdata, width, height)
        entries = np.empty((sid.shape[0], gdata.shape[1]), dtype=np.float32)
        g_img = _np32(g_image)
        t_fin = t_final.detach().contiguous().numpy()
        K.run_parallel(
            K.backward_kernel, gdata, boxes, sid, _ids(tile_offsets), grid_x, grid_y,
            width, height, _np32(background), t_fin, n_used.detach().contiguous().numpy(),
            g_img, _np32(g_alpha), entries)
        per_splat = torch.from_numpy(
            K.reduce_entries(sid, entries, gdata.shape[0], max(1, numba.get_num_threads())))
        g_bg = (g_image.detach().to(torch.float64) * t_final.detach()[..., None]).sum((0, 1))
        return (per_splat[:, 0:2].contiguous(), per_splat[:, 2:5].contiguous(),
                per_splat[:, 6:].contiguous(), per_splat[:, 5].contiguous(),
                g_bg.to(torch.float32))

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("double backward through the cpu compositing backend is not "
                                  "supported; use backend='reference'")


class _CompositeCPUJVP(torch.autograd.Function):
    """The JVP kernel (primal recomputed, tangent returned) as a Function, for torch.func."""

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                dm, dc, df, do, dbg, meta):
        grid_x, grid_y, width, height = meta
        gdata = _pack(means2d, conics, opacities, features)
        tdata = _pack_tangents((dm, dc, do, df), gdata, features.shape[1])
        _, t_final, _, image_dot, alpha_dot = _run_jvp(
            gdata, tdata, _ids(splat_ids), _ids(tile_offsets), grid_x, grid_y, width, height,
            _np32(background))
        return _tangent_outputs(image_dot, alpha_dot, torch.from_numpy(t_final), dbg)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("reverse mode through the JVP of the cpu compositing backend "
                                  "is not supported; use backend='reference'")




def _fused_forward_ad(tensors, splat_ids, tile_offsets, grid_x, grid_y, width, height):
    """If some input is a forward_ad dual tensor, run the fused primal+tangent kernel."""
    if any(glue.is_functorch(t) for t in tensors):
        return None
    tangents = [fwAD.unpack_dual(t).tangent for t in tensors]
    if all(t is None for t in tangents):
        return None
    means2d, conics, features, opacities, background = (fwAD.unpack_dual(t).primal for t in tensors)
    dm, dc, df, do, dbg = tangents
    gdata = _pack(means2d, conics, opacities, features)
    tdata = _pack_tangents((dm, dc, do, df), gdata, features.shape[1])
    image, t_final, n_used, image_dot, alpha_dot = _run_jvp(
        gdata, tdata, _ids(splat_ids), _ids(tile_offsets), grid_x, grid_y, width, height,
        _np32(background))
    img, alpha, tf = _outputs(image, t_final)
    tangent = _tangent_outputs(image_dot, alpha_dot, tf, dbg)
    return glue.Fused((img, alpha, tf, torch.from_numpy(n_used)), tangent)


def composite_cpu(
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
    """Composite V splats into an image with the native CPU kernels.

    Same arguments and results as
    :func:`~trsplat.render.composite_reference.composite_reference`: image (H, W, C) =
    Σ f·α·T + T_final·background and alpha (H, W) = 1 − T_final. ``max_pairs`` is only used by
    the float64 fallback to the reference compositor.
    """
    if any(t.dtype == torch.float64 for t in (means2d, conics, features, opacities)):
        return composite_reference(means2d, conics, features, opacities, bins, width, height,
                                   background, max_pairs=max_pairs)
    out_dtype, out_device = features.dtype, features.device
    cpu32 = [t.to("cpu", torch.float32) for t in (means2d, conics, features, opacities)]
    bg = torch.as_tensor(background).to("cpu", torch.float32)
    if bg.ndim == 0:
        bg = bg.expand(features.shape[1])
    width, height = int(width), int(height)
    grid_x, grid_y = int(bins.grid_x), int(bins.grid_y)
    splat_ids = bins.splat_ids.detach().to("cpu")
    tile_offsets = bins.tile_offsets.detach().to("cpu")
    if tile_offsets.numel() != grid_x * grid_y + 1:
        raise ValueError(f"tile_offsets has {tile_offsets.numel()} entries, expected "
                         f"{grid_x * grid_y + 1}")
    tensors = cpu32 + [bg]
    fused = _fused_forward_ad(tensors, splat_ids, tile_offsets, grid_x, grid_y, width, height)
    image, alpha, _, _ = _CompositeCPU.apply(
        *tensors, splat_ids, tile_offsets, grid_x, grid_y, width, height, fused)
    if out_dtype != torch.float32 or out_device != image.device:
        image = image.to(out_device, out_dtype)
        alpha = alpha.to(out_device, out_dtype)
    return image, alpha
