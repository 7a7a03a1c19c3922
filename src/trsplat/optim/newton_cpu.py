"""numba kernel of the guarded Newton step of :func:`trsplat.optim.tr.guarded_newton_step`.

The torch version makes five passes over each parameter's coordinates (guard, divide, negate,
zero where ĝ = 0, NaN/inf → 0) and allocates two temporaries; this kernel makes one.  It is
bit-identical by construction: max, |·|, ÷, negation and comparisons are exactly rounded, the
guard floor is rounded to the tensors' dtype as torch rounds a Python scalar, and ``fastmath``
is off; every zeroed entry (ĝ = 0, D̂ = 0 under ``raw``, NaN or ±inf) is +0, as torch's
``masked_fill_``/``nan_to_num_`` write it.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import Tensor

GUARD_CODES = {"sophia": 0, "abs": 1, "raw": 2}
_DTYPES = (torch.float32, torch.float64)


@njit(parallel=True, fastmath=False, error_model="numpy", cache=True)
def _newton(g, d, guard, floor, out):  # pragma: no cover - compiled
    """``d`` of size 0: D̂ = 0 everywhere."""
    zero_curvature = d.size == 0
    zero = floor - floor  # +0 in the tensors' dtype (``floor`` has it and is finite)
    for i in prange(g.size):
        gi = g[i]
        di = zero if zero_curvature else d[i]
        if guard == 0:
            den = max(di, floor)
        elif guard == 1:
            den = max(abs(di), floor)
        else:
            den = di
        s = -(gi / den)
        if (guard == 2 and di == 0) or gi == 0 or not np.isfinite(s):
            out[i] = 0.0
        else:
            out[i] = s


def applies(g_hat: Tensor, d_hat: Tensor | None) -> bool:
    """Whether the kernel can take ``(g_hat, d_hat)``: CPU tensors of one float dtype and shape
    (``d_hat`` None: D̂ = 0)."""
    if d_hat is None:
        return g_hat.device.type == "cpu" and g_hat.dtype in _DTYPES
    return (g_hat.device.type == "cpu" and d_hat.device.type == "cpu" and g_hat.dtype in _DTYPES
            and d_hat.dtype == g_hat.dtype and g_hat.shape == d_hat.shape)


def newton_step_cpu(g_hat: Tensor, d_hat: Tensor | None, guard: str, floor: float) -> Tensor:
    """−ĝ/D̂ with ``guard`` (a new tensor shaped like ``g_hat``; ``d_hat`` None: D̂ = 0), as the
    torch version computes it."""
    out = torch.empty(g_hat.shape, dtype=g_hat.dtype)
    if out.numel():
        np_dtype = np.float32 if g_hat.dtype == torch.float32 else np.float64
        d = np.empty(0, np_dtype) if d_hat is None else d_hat.detach().contiguous().numpy().reshape(-1)
        _newton(g_hat.detach().contiguous().numpy().reshape(-1), d, GUARD_CODES[guard], np_dtype(floor),
                out.numpy().reshape(-1))
    return out
