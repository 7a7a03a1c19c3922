"""GPU compositing backend: numba-cuda kernels wrapped in a ``torch.autograd.Function``.

:func:`composite_cuda` has the signature and the semantics of
:func:`trsplat.render.composite_reference.composite_reference` (INRIA's ``renderCUDA`` loop,
``3dgs-conventions.md`` §6) and the autograd surface of the ``cpu`` backend
(:mod:`trsplat.render.composite_cpu`):

* reverse mode: ``backward`` runs a back-to-front VJP kernel (3DGS style) that recomputes each
  pixel's history from the saved final transmittance and last contributor;
* forward mode: ``jvp`` (``torch.autograd.forward_ad`` and ``torch.func.jvp``); the JVP kernel
  pushes tangents through the forward loop and returns the primal in the same pass;
* ``torch.func.vjp`` / ``grad`` / ``jvp`` (setup_context-style Function); no double backward
  and no ``vmap`` (they raise);
* the JVP-then-backward pattern of the trust-region optimizer: under
  ``forward_ad.dual_level()`` render with dual inputs, then ``primal.backward(tangent)``.

With ``forward_ad`` dual inputs the wrapper sees the tangents before the Function runs and runs
the fused primal + tangent kernel once (the Function's ``forward`` only hands back the
precomputed primal). Under ``torch.func.jvp`` the tangents are invisible to the wrapper, so the
forward and the JVP kernel both run (correct, ~2x the work).

Devices: on a GPU the kernels read and write torch CUDA tensors in place (handed to numba with
``numba.cuda.as_cuda_array``) and are launched on torch's current stream, so they are ordered
with the surrounding torch work and no synchronisation is added. CPU inputs are moved to the
current CUDA device and the outputs moved back. With ``NUMBA_ENABLE_CUDASIM=1`` (set before
``numba.cuda`` is first imported) the same kernels run in numba's CUDA simulator on CPU tensors:
slow (Python threads, one per pixel), for tests only.

Dtypes: inputs are computed in float32 (the conversion is differentiable) and the outputs
returned in ``features``' dtype; float64 inputs fall back to the float64 ``reference``
compositor, so gradcheck-style tests keep double precision.

Gradients are accumulated with float32 atomics, so they are not bitwise reproducible between
runs on a GPU (see :mod:`trsplat.render.cuda_kernels` and ``docs/backends_cuda.md``).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.autograd.forward_ad as fwAD

from trsplat.errors import TrsplatError
from trsplat.render import composite_autograd as glue
from trsplat.render.composite_reference import composite_reference
from trsplat.render.tiles import TileBins

__all__ = ["composite_cuda", "check_available", "is_usable", "simulator_enabled"]

_INSTALL = "pip install numba-cuda, or pip install 'trsplat[cuda]'"

# numba-cuda warns on every launch of fewer than 128 blocks (small images); that is expected here
warnings.filterwarnings("ignore", message=r"Grid size \d+ will likely result in GPU under-utilization")


# -- availability -------------------------------------------------------------------------------
def _numba_cuda():
    """``numba.cuda`` of the numba-cuda package, or None when it cannot be imported."""
    try:
        from numba import cuda
    except Exception:  # ImportError, or a broken CUDA installation raising on import
        return None
    # numba < 0.61 ships a deprecated built-in numba.cuda; numba-cuda says "NVIDIA" here
    if getattr(cuda, "implementation", None) != "NVIDIA":
        return None
    return cuda


def simulator_enabled() -> bool:
    """True when numba-cuda runs kernels in its CPU simulator (``NUMBA_ENABLE_CUDASIM=1``)."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") in ("", "0"):
        return False
    if _numba_cuda() is None:
        return False
    from numba.cuda.core import config

    return bool(config.ENABLE_CUDASIM)


def check_available() -> None:
    """Raise :class:`TrsplatError` unless the ``cuda`` backend can run here."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        if _numba_cuda() is None:
            raise TrsplatError(f"backend 'cuda' needs the numba-cuda package ({_INSTALL})")
        if simulator_enabled():
            return
        raise TrsplatError("NUMBA_ENABLE_CUDASIM is set but numba.cuda was imported before it was "
                           "set; set it before starting Python to use the CUDA simulator")
    if not torch.cuda.is_available():
        raise TrsplatError(
            "backend 'cuda' needs an NVIDIA GPU, its driver and a CUDA build of torch "
            "(torch.cuda.is_available() is False); use backend 'cpu' (or, for tests, set "
            "NUMBA_ENABLE_CUDASIM=1 to run the kernels in numba's slow CUDA simulator)")
    cuda = _numba_cuda()
    if cuda is None:
        raise TrsplatError(f"backend 'cuda' needs an NVIDIA GPU and the numba-cuda package, "
                           f"which is missing ({_INSTALL})")
    if not cuda.is_available():
        raise TrsplatError("backend 'cuda' needs an NVIDIA GPU that numba-cuda can use, but "
                           "numba.cuda.is_available() is False (driver / CUDA runtime not found "
                           "by numba-cuda; see numba.cuda.detect())")


def is_usable() -> bool:
    """True on a machine with a usable GPU (not the simulator): the ``auto`` backend choice."""
    if not torch.cuda.is_available():
        return False
    cuda = _numba_cuda()
    if cuda is None:
        return False
    try:
        from numba.cuda.core import config

        if config.ENABLE_CUDASIM:
            return False
        return bool(cuda.is_available())
    except Exception:
        return False


# -- kernel launches ----------------------------------------------------------------------------
def _kernels(n_ch: int):
    from trsplat.render import cuda_kernels as K

    return K.kernels(n_ch, not simulator_enabled())


def _launch(kernel, grid_x: int, grid_y: int, *args) -> None:
    """Launch ``kernel`` with one 16x16 block per tile; tensors are passed without copies."""
    from numba import cuda

    from trsplat.render.cuda_kernels import TILE

    grid, block = (grid_x, grid_y), (TILE, TILE)
    if simulator_enabled():
        arrs = [a.detach().numpy() if isinstance(a, torch.Tensor) else a for a in args]
        kernel[grid, block](*arrs)
        return
    device = next(a.device for a in args if isinstance(a, torch.Tensor))
    with cuda.gpus[device.index]:
        stream = cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)
        arrs = [cuda.as_cuda_array(a.detach(), sync=False) if isinstance(a, torch.Tensor) else a
                for a in args]
        kernel[grid, block, stream](*arrs)


def _c32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float32).contiguous()


def _run_forward(means2d, conics, opacities, features, splat_ids, tile_offsets, grid_x, grid_y,
                 width, height, background):
    """(image (H, W, C) f32, t_final (H, W) f32, n_used (H, W) i32) on the inputs' device."""
    dev = features.device
    n_ch = features.shape[1]
    if splat_ids.numel() == 0:
        image = _c32(background).expand(height, width, n_ch).clone()
        return (image, torch.ones(height, width, dtype=torch.float32, device=dev),
                torch.zeros(height, width, dtype=torch.int32, device=dev))
    image = torch.empty(height, width, n_ch, dtype=torch.float32, device=dev)
    t_final = torch.empty(height, width, dtype=torch.float32, device=dev)
    n_used = torch.empty(height, width, dtype=torch.int32, device=dev)
    _launch(_kernels(n_ch).forward, grid_x, grid_y,
            _c32(means2d), _c32(conics), _c32(opacities), _c32(features), splat_ids,
            tile_offsets, grid_x, width, height, _c32(background), image, t_final, n_used)
    return image, t_final, n_used


def _tangent_or_zeros(t, like):
    return torch.zeros_like(like) if t is None else _c32(t)


def _run_jvp(means2d, conics, opacities, features, tangents, splat_ids, tile_offsets, grid_x,
             grid_y, width, height, background):
    """Primal outputs of :func:`_run_forward` plus image_dot (H, W, C), alpha_dot (H, W), without
    the background tangent. ``tangents`` = (d_means2d, d_conics, d_opacities, d_features), None
    meaning zero."""
    dev = features.device
    n_ch = features.shape[1]
    if splat_ids.numel() == 0:
        image, t_final, n_used = _run_forward(means2d, conics, opacities, features, splat_ids,
                                              tile_offsets, grid_x, grid_y, width, height,
                                              background)
        return (image, t_final, n_used, torch.zeros_like(image), torch.zeros_like(t_final))
    m, c, o, f = _c32(means2d), _c32(conics), _c32(opacities), _c32(features)
    dm, dc, do, df = (_tangent_or_zeros(t, x) for t, x in zip(tangents, (m, c, o, f)))
    image = torch.empty(height, width, n_ch, dtype=torch.float32, device=dev)
    t_final = torch.empty(height, width, dtype=torch.float32, device=dev)
    n_used = torch.empty(height, width, dtype=torch.int32, device=dev)
    image_dot = torch.empty_like(image)
    alpha_dot = torch.empty_like(t_final)
    _launch(_kernels(n_ch).jvp, grid_x, grid_y, m, c, o, f, dm, dc, do, df, splat_ids,
            tile_offsets, grid_x, width, height, _c32(background), image, t_final, n_used,
            image_dot, alpha_dot)
    return image, t_final, n_used, image_dot, alpha_dot


def _run_vjp(means2d, conics, opacities, features, splat_ids, tile_offsets, grid_x, grid_y,
             width, height, background, t_final, n_used, g_image, g_alpha):
    """Per-splat gradients (V, 6 + C) f32, columns [mean xy, conic abc, opacity, features]."""
    n_ch = features.shape[1]
    grads = torch.zeros(features.shape[0], 6 + n_ch, dtype=torch.float32, device=features.device)
    if splat_ids.numel() == 0:
        return grads
    _launch(_kernels(n_ch).backward, grid_x, grid_y,
            _c32(means2d), _c32(conics), _c32(opacities), _c32(features), splat_ids,
            tile_offsets, grid_x, width, height, _c32(background), t_final.detach().contiguous(),
            n_used.detach().contiguous(), _c32(g_image), _c32(g_alpha), grads)
    return grads


# -- autograd -------------------------------------------------------------------------------------
def _tangent_outputs(image_dot, alpha_dot, t_final, bg_dot):
    if bg_dot is not None:
        image_dot = image_dot + t_final[..., None] * _c32(bg_dot)
    return image_dot, alpha_dot


class _CompositeCUDA(torch.autograd.Function):
    """Inputs are float32 tensors on the compute device; see :func:`composite_cuda`."""

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                grid_x, grid_y, width, height, fused):
        if fused is not None:
            return fused.primal
        image, t_final, n_used = _run_forward(means2d, conics, opacities, features, splat_ids,
                                              tile_offsets, grid_x, grid_y, width, height,
                                              background)
        return image, 1.0 - t_final, t_final, n_used

    @staticmethod
    def setup_context(ctx, inputs, output):
        glue.setup_context(ctx, inputs, output)

    @staticmethod
    def backward(ctx, g_image, g_alpha, _g_t, _g_n):
        return glue.backward(ctx, g_image, g_alpha, _CompositeCUDAVJP)

    @staticmethod
    def jvp(ctx, dm, dc, df, do, dbg, *_rest):
        return glue.jvp(ctx, dm, dc, df, do, dbg, _CompositeCUDAJVP)

    @staticmethod
    def vmap(info, in_dims, *args):
        raise NotImplementedError("the cuda compositing backend does not support vmap")


class _CompositeCUDAVJP(torch.autograd.Function):
    """The VJP kernel as its own Function, so torch.func transforms see plain tensors.

    Its own backward (double backward of compositing) is not implemented.
    """

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                t_final, n_used, g_image, g_alpha, meta):
        grid_x, grid_y, width, height = meta
        grads = _run_vjp(means2d, conics, opacities, features, splat_ids, tile_offsets, grid_x,
                         grid_y, width, height, background, t_final, n_used, g_image, g_alpha)
        g_bg = (_c32(g_image) * t_final.detach()[..., None]).sum((0, 1))
        return (grads[:, 0:2].contiguous(), grads[:, 2:5].contiguous(),
                grads[:, 6:].contiguous(), grads[:, 5].contiguous(), g_bg)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("double backward through the cuda compositing backend is not "
                                  "supported; use backend='reference'")


class _CompositeCUDAJVP(torch.autograd.Function):
    """The JVP kernel (primal recomputed, tangent returned) as a Function, for torch.func."""

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                dm, dc, df, do, dbg, meta):
        grid_x, grid_y, width, height = meta
        _, t_final, _, image_dot, alpha_dot = _run_jvp(
            means2d, conics, opacities, features, (dm, dc, do, df), splat_ids, tile_offsets,
            grid_x, grid_y, width, height, background)
        return _tangent_outputs(image_dot, alpha_dot, t_final, dbg)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError("reverse mode through the JVP of the cuda compositing backend "
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
    image, t_final, n_used, image_dot, alpha_dot = _run_jvp(
        means2d, conics, opacities, features, (dm, dc, do, df), splat_ids, tile_offsets,
        grid_x, grid_y, width, height, background)
    tangent = _tangent_outputs(image_dot, alpha_dot, t_final, dbg)
    return glue.Fused((image, 1.0 - t_final, t_final, n_used), tangent)


def composite_cuda(
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
    """Composite V splats into an image with the numba-cuda kernels.

    Same arguments and results as
    :func:`~trsplat.render.composite_reference.composite_reference`: image (H, W, C) =
    Σ f·α·T + T_final·background and alpha (H, W) = 1 − T_final. ``max_pairs`` is only used by
    the float64 fallback to the reference compositor.

    Raises:
        TrsplatError: no usable GPU / numba-cuda (and the simulator is not enabled).
    """
    if any(t.dtype == torch.float64 for t in (means2d, conics, features, opacities)):
        return composite_reference(means2d, conics, features, opacities, bins, width, height,
                                   background, max_pairs=max_pairs)
    check_available()
    out_dtype, out_device = features.dtype, features.device
    if simulator_enabled():
        dev = torch.device("cpu")
    elif means2d.device.type == "cuda":
        dev = means2d.device
    else:
        dev = torch.device("cuda", torch.cuda.current_device())
    f32 = [t.to(dev, torch.float32) for t in (means2d, conics, features, opacities)]
    bg = torch.as_tensor(background).to(dev, torch.float32)
    if bg.ndim == 0:
        bg = bg.expand(features.shape[1])
    width, height = int(width), int(height)
    grid_x, grid_y = int(bins.grid_x), int(bins.grid_y)
    splat_ids = bins.splat_ids.detach().to(dev).contiguous()
    tile_offsets = bins.tile_offsets.detach().to(dev).contiguous()
    if tile_offsets.numel() != grid_x * grid_y + 1:
        raise ValueError(f"tile_offsets has {tile_offsets.numel()} entries, expected "
                         f"{grid_x * grid_y + 1}")
    tensors = f32 + [bg]
    fused = _fused_forward_ad(tensors, splat_ids, tile_offsets, grid_x, grid_y, width, height)
    image, alpha, _, _ = _CompositeCUDA.apply(
        *tensors, splat_ids, tile_offsets, grid_x, grid_y, width, height, fused)
    if out_dtype != torch.float32 or out_device != image.device:
        image = image.to(out_device, out_dtype)
        alpha = alpha.to(out_device, out_dtype)
    return image, alpha
