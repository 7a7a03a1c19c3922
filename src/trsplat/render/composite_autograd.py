"""The autograd glue the native compositing backends share (``cpu`` and ``cuda``).

Each backend is a ``torch.autograd.Function`` whose ``forward`` runs its forward kernel and
returns ``(image, alpha, t_final, n_used)``; its VJP and JVP kernels live in inner Functions (so
torch.func transforms hand them plain tensors). What is the same for every backend is here: what
is saved, how a backward is turned into a call of the VJP Function, and how a JVP is answered,
from the fused forward_ad fast path when the forward already computed the tangent.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD


def is_functorch(t: torch.Tensor) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def primal(t: torch.Tensor) -> torch.Tensor:
    """``t`` without a forward-AD tangent (functorch-wrapped tensors are left alone)."""
    if is_functorch(t):
        return t
    return fwAD.unpack_dual(t).primal


class Fused:
    """Primal and tangent precomputed by a fused JVP kernel (forward_ad fast path)."""

    __slots__ = ("primal", "tangent")

    def __init__(self, primal, tangent):
        self.primal = primal
        self.tangent = tangent


def setup_context(ctx, inputs, output) -> None:
    """Save what the VJP and the JVP need (inputs of the compositor signature + fused)."""
    (means2d, conics, features, opacities, background, splat_ids, tile_offsets,
     grid_x, grid_y, width, height, fused) = inputs
    _, _, t_final, n_used = output
    ctx.mark_non_differentiable(t_final, n_used)
    ctx.save_for_backward(means2d, conics, features, opacities, background, splat_ids,
                          tile_offsets, t_final, n_used)
    ctx.save_for_forward(means2d, conics, features, opacities, background, splat_ids,
                         tile_offsets)
    ctx.meta = (grid_x, grid_y, width, height)
    ctx.fused = fused
    ctx.set_materialize_grads(False)


def backward(ctx, g_image, g_alpha, vjp_function) -> tuple:
    """Gradients of the 12 forward inputs, computed by ``vjp_function.apply``."""
    (means2d, conics, features, opacities, background, splat_ids, tile_offsets,
     t_final, n_used) = ctx.saved_tensors
    grid_x, grid_y, width, height = ctx.meta
    if g_image is None and g_alpha is None:
        return (None,) * 12
    dev = features.device
    if g_image is None:
        g_image = torch.zeros((height, width, features.shape[1]), dtype=torch.float32, device=dev)
    if g_alpha is None:
        g_alpha = torch.zeros((height, width), dtype=torch.float32, device=dev)
    # Saved inputs are still dual tensors when a JVP forward is followed by this backward
    # (the optimizer's pattern): drop the tangents, the VJP does not need them.
    gm, gc, gf, go, gbg = vjp_function.apply(
        *map(primal, (means2d, conics, features, opacities, background)), splat_ids,
        tile_offsets, t_final, n_used, primal(g_image), primal(g_alpha),
        (grid_x, grid_y, width, height))
    need = ctx.needs_input_grad
    return (gm if need[0] else None, gc if need[1] else None, gf if need[2] else None,
            go if need[3] else None, gbg if need[4] else None) + (None,) * 7


def jvp(ctx, dm, dc, df, do, dbg, jvp_function) -> tuple:
    """Tangents of (image, alpha, t_final, n_used): the fused result, or ``jvp_function.apply``."""
    fused = ctx.fused
    if fused is not None and fused.tangent is not None:
        img_d, alpha_d = fused.tangent
        ctx.fused = None
        return img_d, alpha_d, None, None
    means2d, conics, features, opacities, background, splat_ids, tile_offsets = ctx.saved_tensors
    img_d, alpha_d = jvp_function.apply(
        means2d, conics, features, opacities, background, splat_ids, tile_offsets,
        dm, dc, df, do, dbg, ctx.meta)
    return img_d, alpha_d, None, None
