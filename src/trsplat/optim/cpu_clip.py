"""The CPU fast path of :func:`trsplat.optim.hellinger.clip_step`: when it applies, and the calls
into the numba kernels of :mod:`trsplat.optim.hellinger_cpu`.

Stage 1 (the transcendental terms and square roots) runs through the same torch code as the
reference; only the exactly rounded arithmetic is handed to numba, so both paths are
bit-identical (``docs/trust_region.md``, "Implementations").
"""

from __future__ import annotations

from functools import partial
from typing import Iterable, Mapping

import torch
from torch import Tensor

from trsplat.optim.hellinger import RADIUS_INPUTS, TrustRegionConfig, _check_step, _radius_table

_KERNEL_DTYPES = (torch.float32, torch.float64)


def _param_shapes(params: Mapping[str, Tensor], names: Iterable[str]) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the params that clipping ``names`` reads, if they have the standard layout
    (opacity (N,), log_scales (N,3), quats (N,4), sh_dc (N,1,3), sh_rest (N,K,3)), else None."""
    needed = {k for name in names for k in RADIUS_INPUTS[name]}
    n = params["opacity_logits"].shape[0] if params["opacity_logits"].dim() == 1 else -1
    k = params["sh_rest"].shape[1] if "sh_rest" in needed and params["sh_rest"].dim() == 3 else -1
    standard = {"opacity_logits": (n,), "log_scales": (n, 3), "quats": (n, 4), "sh_dc": (n, 1, 3),
                "sh_rest": (n, k, 3)}
    if n < 0 or any(tuple(params[p].shape) != standard[p] for p in needed):
        return None
    return standard


def cpu_unsupported_reason(params: Mapping[str, Tensor], step: Mapping[str, Tensor],
                           cfg: TrustRegionConfig) -> str | None:
    """Why the ``"cpu"`` backend of :func:`~trsplat.optim.hellinger.clip_step` cannot clip ``step``,
    or None if it can.

    It needs CPU tensors, float32/float64 params and steps, ``cfg.compute_dtype == float64`` and
    the standard parameter shapes (see :func:`_param_shapes`; the steps themselves are checked
    as in the reference).  Every other option of :class:`TrustRegionConfig` is supported.
    """
    if cfg.compute_dtype != torch.float64:
        return f"compute_dtype must be float64, got {cfg.compute_dtype}"
    needed = [params[k] for k in sorted({k for name in step for k in RADIUS_INPUTS[name]})]
    if any(t.device.type != "cpu" for t in needed + list(step.values())):
        return "all params and steps must be CPU tensors"
    # (a step that is not floating point at all is rejected by the checks both backends share)
    if any(t.dtype not in _KERNEL_DTYPES for t in needed) or any(
            t.dtype.is_floating_point and t.dtype not in _KERNEL_DTYPES for t in step.values()):
        return "params and steps must be float32 or float64"
    if _param_shapes(params, step) is None:
        return "params do not have the standard shapes (N,), (N,3), (N,4), (N,1,3), (N,K,3)"
    return None


def clip_cpu(params: Mapping[str, Tensor], step: Mapping[str, Tensor], eps: float,
             cfg: TrustRegionConfig, names: tuple[str, ...]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The ``"cpu"`` backend of :func:`~trsplat.optim.hellinger.clip_step`: the arithmetic in the
    numba kernels of :mod:`trsplat.optim.hellinger_cpu`."""
    from trsplat.optim import hellinger_cpu as kernels  # imports numba on first use

    shapes = _param_shapes(params, names)
    assert shapes is not None
    expected = dict(shapes, means=shapes["log_scales"])
    for name, st in step.items():
        _check_step(name, st, expected[name])
    n = expected["opacity_logits"][0]
    clipped: dict[str, Tensor] = {}
    on_bound: dict[str, Tensor] = {}
    with torch.no_grad():
        table = _radius_table(params, eps, cfg, names, partial(_radicands_cpu, kernels)) if n else {}
        for name, st in step.items():
            st = st.detach().contiguous()
            out = torch.empty_like(st, memory_format=torch.contiguous_format)
            hit = torch.empty(st.shape, dtype=torch.bool)
            clipped[name], on_bound[name] = out, hit
            if n == 0:
                continue
            s, o, h = st.numpy(), out.numpy(), hit.numpy()
            if name in ("means", "quats"):
                kernels.clip_symmetric(_np(table[name][0]), s, o, h)
            elif name in ("log_scales", "opacity_logits"):
                m = 3 if name == "log_scales" else 1   # both as (N, m): one compiled kernel
                lo, hi = (_np(t[:, None].expand(n, m)) for t in table[name])
                kernel_opacity = name == "opacity_logits" and cfg.opacity_box_mode == "kernel"
                kernels.clip_interval(lo, hi, kernel_opacity, s.reshape(n, m), o.reshape(n, m), h.reshape(n, m))
            else:
                down_h, up_h = (_np(t).reshape(n, 3) for t in table["color"])
                dc = _np(params["sh_dc"]).reshape(n, 3)
                if name == "sh_dc":
                    kernels.clip_color_dc(dc, down_h, up_h, cfg.sh_c0, cfg.color_box, s.reshape(n, 3),
                                          o.reshape(n, 3), h.reshape(n, 3))
                else:
                    m = 3 * st.shape[1]
                    kernels.clip_color_rest(dc, down_h, up_h, _np(params["sh_rest"]).reshape(n, m), cfg.sh_c0,
                                            cfg.color_box, cfg.rest_radius_from_box, float(cfg.rest_ratio),
                                            s.reshape(n, m), o.reshape(n, m), h.reshape(n, m))
    return clipped, on_bound


def _np(t: Tensor):
    """A C-contiguous numpy view (or copy) of a CPU tensor."""
    return t.detach().contiguous().numpy()


def _radicands_cpu(kernels, quats: Tensor, norm: Tensor, e: Tensor | None, nl_pos: Tensor | None,
                   sinh2: Tensor | None, nl_rot: Tensor | None,
                   cfg: TrustRegionConfig) -> tuple[Tensor | None, Tensor | None]:
    """The position and rotation radicands of :func:`trsplat.optim.hellinger._radius_table` (either
    may be skipped by passing None terms) in one numba pass, bit-identical to the torch ones."""
    n, dt = norm.shape[0], cfg.compute_dtype
    rad_pos = torch.empty((n if e is not None else 0, 3), dtype=dt)
    rad_rot = torch.empty((n if sinh2 is not None else 0, 4), dtype=dt)
    none3, none1 = torch.empty((0, 3), dtype=dt), torch.empty(0, dtype=dt)
    kernels.radicands(_np(quats), _np(norm), _np(none3 if e is None else e), _np(none1 if nl_pos is None else nl_pos),
                      _np(none3 if sinh2 is None else sinh2), _np(none1 if nl_rot is None else nl_rot),
                      cfg.bounds == "kernel", rad_pos.numpy(), rad_rot.numpy())
    return (rad_pos if e is not None else None), (rad_rot if sinh2 is not None else None)

