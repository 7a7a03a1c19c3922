"""The ``cuda`` compositor: numba-cuda kernels (:mod:`trsplat.render.cuda_kernels`).

:data:`composite_cuda` is :func:`trsplat.render.composite_autograd.composite_native` with the
kernel set :data:`KERNELS`: same signature and results as
:func:`trsplat.render.composite_reference.composite_reference`, reverse and forward mode,
torch.func. This module holds what is specific to the GPU: whether it can run here
(:func:`unavailable_reason`) and the kernel launches.

On a GPU the kernels read and write torch CUDA tensors in place (handed to numba with
``numba.cuda.as_cuda_array``) and are launched on torch's current stream, so they are ordered
with the surrounding torch work and no synchronisation is added; CPU inputs are computed on the
current CUDA device. With ``NUMBA_ENABLE_CUDASIM=1`` (set before ``numba.cuda`` is first
imported) the same kernels run in numba's CUDA simulator on CPU tensors: slow (Python threads,
one per pixel), for tests only. Gradients are accumulated with float32 atomics, so they are not
bitwise reproducible between runs on a GPU (``docs/backends_cuda.md``).
"""

from __future__ import annotations

import os
import warnings
from functools import partial

import torch

from trsplat.errors import TrsplatError
from trsplat.render.composite_autograd import Launch, composite_native

__all__ = ["KERNELS", "composite_cuda", "check_available", "is_usable", "simulator_enabled",
           "unavailable_reason"]

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


def unavailable_reason() -> str | None:
    """Why the ``cuda`` backend cannot run here (one line), or None when it can."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        if _numba_cuda() is None:
            return f"backend 'cuda' needs the numba-cuda package ({_INSTALL})"
        if simulator_enabled():
            return None
        return ("NUMBA_ENABLE_CUDASIM is set but numba.cuda was imported before it was set; set "
                "it before starting Python to use the CUDA simulator")
    if not torch.cuda.is_available():
        return ("backend 'cuda' needs an NVIDIA GPU, its driver and a CUDA build of torch "
                "(torch.cuda.is_available() is False); use backend 'cpu' (or, for tests, set "
                "NUMBA_ENABLE_CUDASIM=1 to run the kernels in numba's slow CUDA simulator)")
    cuda = _numba_cuda()
    if cuda is None:
        return (f"backend 'cuda' needs an NVIDIA GPU and the numba-cuda package, which is "
                f"missing ({_INSTALL})")
    if not cuda.is_available():
        return ("backend 'cuda' needs an NVIDIA GPU that numba-cuda can use, but "
                "numba.cuda.is_available() is False (driver / CUDA runtime not found by "
                "numba-cuda; see numba.cuda.detect())")
    return None


def check_available() -> None:
    """Raise :class:`TrsplatError` unless the ``cuda`` backend can run here."""
    reason = unavailable_reason()
    if reason is not None:
        raise TrsplatError(reason)


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


def _empty(launch: Launch, n_ch: int, dev: torch.device):
    """Image (H, W, C) f32, t_final (H, W) f32 and n_used (H, W) int32 to be written."""
    h, w = launch.height, launch.width
    return (torch.empty(h, w, n_ch, dtype=torch.float32, device=dev),
            torch.empty(h, w, dtype=torch.float32, device=dev),
            torch.empty(h, w, dtype=torch.int32, device=dev))


class CudaKernels:
    """The :class:`~trsplat.render.composite_autograd.KernelSet` of the ``cuda`` backend."""

    name = "cuda"

    def check(self) -> None:
        check_available()

    def device(self, like: torch.Tensor) -> torch.device:
        if simulator_enabled():
            return torch.device("cpu")
        if like.device.type == "cuda":
            return like.device
        return torch.device("cuda", torch.cuda.current_device())

    def run_forward(self, means2d, conics, features, opacities, background, splat_ids,
                    tile_offsets, launch):
        n_ch = features.shape[1]
        if splat_ids.numel() == 0:
            h, w, dev = launch.height, launch.width, features.device
            image = _c32(background).expand(h, w, n_ch).clone()
            return (image, torch.ones(h, w, dtype=torch.float32, device=dev),
                    torch.zeros(h, w, dtype=torch.int32, device=dev))
        outs = _empty(launch, n_ch, features.device)
        _launch(_kernels(n_ch).forward, launch.grid_x, launch.grid_y,
                _c32(means2d), _c32(conics), _c32(opacities), _c32(features), splat_ids,
                tile_offsets, launch.grid_x, launch.width, launch.height, _c32(background), *outs)
        return outs

    def run_jvp(self, means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                tangents, launch):
        if splat_ids.numel() == 0:
            outs = self.run_forward(means2d, conics, features, opacities, background, splat_ids,
                                    tile_offsets, launch)
            return outs + (torch.zeros_like(outs[0]), torch.zeros_like(outs[1]))
        m, c, f, o = _c32(means2d), _c32(conics), _c32(features), _c32(opacities)
        dm, dc, df, do = (torch.zeros_like(x) if t is None else _c32(t)
                          for t, x in zip(tangents, (m, c, f, o)))
        outs = _empty(launch, f.shape[1], f.device)
        outs += (torch.empty_like(outs[0]), torch.empty_like(outs[1]))
        _launch(_kernels(f.shape[1]).jvp, launch.grid_x, launch.grid_y, m, c, o, f, dm, dc, do, df,
                splat_ids, tile_offsets, launch.grid_x, launch.width, launch.height,
                _c32(background), *outs)
        return outs

    def run_vjp(self, means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                t_final, n_used, g_image, g_alpha, launch):
        n_ch = features.shape[1]
        grads = torch.zeros(features.shape[0], 6 + n_ch, dtype=torch.float32, device=features.device)
        if splat_ids.numel():
            _launch(_kernels(n_ch).backward, launch.grid_x, launch.grid_y,
                    _c32(means2d), _c32(conics), _c32(opacities), _c32(features), splat_ids,
                    tile_offsets, launch.grid_x, launch.width, launch.height, _c32(background),
                    t_final.detach().contiguous(), n_used.detach().contiguous(), _c32(g_image),
                    _c32(g_alpha), grads)
        g_bg = (_c32(g_image) * t_final.detach()[..., None]).sum((0, 1))
        return grads, g_bg


KERNELS = CudaKernels()
composite_cuda = partial(composite_native, KERNELS)  # the signature of composite_reference
