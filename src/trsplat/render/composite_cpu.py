"""The ``cpu`` compositor: numba kernels (:mod:`trsplat.render.cpu_kernels`) on CPU tensors.

:data:`composite_cpu` is :func:`trsplat.render.composite_autograd.composite_native` with the
kernel set :data:`KERNELS`: same signature and results as
:func:`trsplat.render.composite_reference.composite_reference`, reverse and forward mode,
torch.func. This module only packs the splats into the kernels' (V, 6 + C) float32 layout and
launches them. The VJP writes one row of partial gradients per tile-list entry and sums them per
splat in float64 in a fixed order, so gradients are deterministic. Kernel design, tolerances
and benchmarks: ``docs/backends_cpu.md``.

The packed splats and their per-splat tables (boxes, power floors, culling ellipses) are built
once per render: the forward (or JVP) keeps them in :data:`_PREPARED`, keyed by the address of
the t_final buffer it returns, for as long as that buffer lives (the autograd Function saves it
for the backward); the VJP reuses them when it gets that t_final and the same, unmodified input
tensors (``docs/cpu_performance.md``).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from functools import partial

import numba
import numpy as np
import torch

from trsplat.render import cpu_kernels as K
from trsplat.render.composite_autograd import Launch, composite_native

__all__ = ["KERNELS", "composite_cpu"]


def _np32(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).contiguous().numpy()


def _ids(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.int64).contiguous().numpy()


def _pack(means2d, conics, opacities, features, shape: tuple | None = None) -> np.ndarray:
    """(V, 6 + C) float32 array [mx, my, a, b, c, o, f...] (see cpu_kernels). With ``shape``
    (tangents), None inputs are zero."""
    if shape is None:
        shape = (features.shape[0], K.N_GEOM + features.shape[1])
        out = torch.empty(shape, dtype=torch.float32)
    else:
        out = torch.zeros(shape, dtype=torch.float32)
    for cols, t in ((slice(0, 2), means2d), (slice(2, 5), conics), (5, opacities),
                    (slice(6, None), features)):
        if t is not None:
            out[:, cols] = t.detach()
    return out.numpy()


def _boxes(gdata: np.ndarray, width: int, height: int) -> np.ndarray:
    boxes = np.empty((gdata.shape[0], 4), dtype=np.int32)
    if gdata.shape[0]:
        K.splat_boxes(gdata, width, height, boxes)
    return boxes


@dataclass(frozen=True)
class _Prepared:
    """What the kernels of one render share: the input key, gdata, boxes and (pfloor, ell)."""

    key: tuple
    gdata: np.ndarray
    boxes: np.ndarray
    prep: tuple[np.ndarray, np.ndarray]


# t_final buffer address -> the render's prepared arrays, while that buffer is alive.
_PREPARED: dict[int, _Prepared] = {}


def _key(tensors: tuple, width: int, height: int) -> tuple | None:
    """Identity of the kernels' inputs: storage address, version counter (bumped by every
    in-place change), dtype, shape and strides of each tensor, and the image size; None for
    tensors without plain storage (torch.func wrappers), which are never shared."""
    try:
        return tuple((t.data_ptr(), t._version, t.dtype, tuple(t.shape), t.stride())
                     for t in tensors) + (width, height)
    except RuntimeError:
        return None


def _prepare(means2d, conics, features, opacities, launch: Launch) -> _Prepared:
    gdata = _pack(means2d, conics, opacities, features)
    return _Prepared(_key((means2d, conics, features, opacities), launch.width, launch.height),
                     gdata, _boxes(gdata, launch.width, launch.height),
                     K._prep(gdata, launch.width, launch.height))


def _drop(address: int, entry: _Prepared) -> None:
    if _PREPARED.get(address) is entry:
        del _PREPARED[address]


def _remember(t_final: np.ndarray, entry: _Prepared) -> None:
    """Keep ``entry`` for the VJP of the render whose t_final is this (new) buffer."""
    if entry.key is None:
        return
    address = t_final.ctypes.data
    _PREPARED[address] = entry
    weakref.finalize(t_final, _drop, address, entry)


def _recall(means2d, conics, features, opacities, t_final: torch.Tensor,
            launch: Launch) -> _Prepared:
    """The forward's prepared arrays for this t_final and these inputs, else new ones."""
    entry = _PREPARED.get(t_final.data_ptr())
    if entry is not None:
        key = _key((means2d, conics, features, opacities), launch.width, launch.height)
        if key is not None and key == entry.key:
            return entry
    return _prepare(means2d, conics, features, opacities, launch)


def _outputs(gdata: np.ndarray, launch: Launch, n_tangents: int = 0):
    """Empty image (H, W, C), t_final (float64), n_used and ``n_tangents`` tangent images."""
    h, w, n_ch = launch.height, launch.width, gdata.shape[1] - K.N_GEOM
    outs = [np.empty((h, w, n_ch), dtype=np.float32), np.empty((h, w), dtype=np.float64),
            np.empty((h, w), dtype=np.int32)]
    if n_tangents:
        outs += [np.empty((h, w, n_ch), dtype=np.float32), np.empty((h, w), dtype=np.float32)]
    return outs


class CpuKernels:
    """The :class:`~trsplat.render.composite_autograd.KernelSet` of the ``cpu`` backend."""

    name = "cpu"

    def check(self) -> None:
        pass

    def device(self, like: torch.Tensor) -> torch.device:
        return torch.device("cpu")

    def run_forward(self, means2d, conics, features, opacities, background, splat_ids,
                    tile_offsets, launch):
        pre = _prepare(means2d, conics, features, opacities, launch)
        outs = _outputs(pre.gdata, launch)
        K.run_parallel(K.forward_kernel, pre.gdata, pre.boxes, _ids(splat_ids),
                       _ids(tile_offsets), launch.grid_x, launch.grid_y, launch.width,
                       launch.height, _np32(background), *outs, prep=pre.prep)
        _remember(outs[1], pre)
        return tuple(map(torch.from_numpy, outs))

    def run_jvp(self, means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                tangents, launch):
        dm, dc, df, do = tangents
        pre = _prepare(means2d, conics, features, opacities, launch)
        tdata = _pack(dm, dc, do, df, pre.gdata.shape)
        outs = _outputs(pre.gdata, launch, n_tangents=2)
        K.run_parallel(K.jvp_kernel, pre.gdata, tdata, pre.boxes, _ids(splat_ids),
                       _ids(tile_offsets), launch.grid_x, launch.grid_y, launch.width,
                       launch.height, _np32(background), *outs, prep=pre.prep)
        _remember(outs[1], pre)
        return tuple(map(torch.from_numpy, outs))

    def run_vjp(self, means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                t_final, n_used, g_image, g_alpha, launch):
        pre = _recall(means2d, conics, features, opacities, t_final, launch)
        gdata = pre.gdata
        sid = _ids(splat_ids)
        entries = np.empty((sid.shape[0], gdata.shape[1]), dtype=np.float32)
        K.run_parallel(
            K.backward_kernel, gdata, pre.boxes, sid,
            _ids(tile_offsets), launch.grid_x, launch.grid_y, launch.width, launch.height,
            _np32(background), t_final.detach().contiguous().numpy(),
            n_used.detach().contiguous().numpy(), _np32(g_image), _np32(g_alpha), entries,
            prep=pre.prep)
        per_splat = torch.from_numpy(
            K.reduce_entries(sid, entries, gdata.shape[0], max(1, numba.get_num_threads())))
        g_bg = (g_image.detach().to(torch.float64) * t_final.detach()[..., None]).sum((0, 1))
        return per_splat, g_bg.to(torch.float32)


KERNELS = CpuKernels()
composite_cpu = partial(composite_native, KERNELS)  # the signature of composite_reference
