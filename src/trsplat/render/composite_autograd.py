"""The native compositor: one ``torch.autograd.Function`` for every kernel backend (``cpu``, ``cuda``).

:func:`composite_native` has the signature and the semantics of
:func:`trsplat.render.composite_reference.composite_reference` (INRIA's ``renderCUDA`` loop,
``docs/backends_cpu.md``) plus a first argument, the backend's :class:`KernelSet`: the three
kernel launches (forward, VJP, JVP) and where they run. Everything else is here, once:

* float64 inputs fall back to the float64 ``reference`` compositor (gradcheck-style tests keep
  double precision); other dtypes are computed in float32 and returned in ``features``' dtype;
* device moves: inputs go to ``kernels.device(means2d)``, outputs come back to ``features``'
  device (both conversions are differentiable);
* reverse mode: ``backward`` runs the VJP kernel (back to front, 3DGS style);
* forward mode: ``jvp`` (``torch.autograd.forward_ad`` and ``torch.func.jvp``); the JVP kernel
  returns primal and tangent in one pass. With ``forward_ad`` dual inputs the tangents are
  visible before the Function runs, so the fused kernel runs once and ``forward`` only hands
  back its primal; under ``torch.func.jvp`` they are not, so the forward and the JVP kernel
  both run (correct, ~2x the work);
* ``torch.func.vjp`` / ``grad`` / ``jvp``: the VJP and JVP kernels run inside inner Functions,
  so functorch hands them plain tensors; double backward, reverse mode over the JVP and
  ``vmap`` raise;
* the JVP-then-backward pattern of the trust-region optimizer (render with dual inputs under
  ``forward_ad.dual_level()``, then ``primal.backward(tangent)``): the saved inputs are stripped
  of their tangents before the VJP kernel runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.autograd.forward_ad as fwAD

from trsplat.render.composite_reference import composite_reference
from trsplat.render.tiles import TileBins

Tensors = tuple[torch.Tensor, ...]


class KernelSet(Protocol):
    """The backend-specific part of a native compositor: data packing and kernel launches.

    Every ``run_*`` takes float32 tensors on ``device(...)``: ``means2d`` (V, 2), ``conics``
    (V, 3), ``features`` (V, C), ``opacities`` (V,), ``background`` (C,), then ``splat_ids``,
    ``tile_offsets`` (int64, see :class:`TileBins`) and the :class:`Launch`.
    """

    name: str

    def check(self) -> None:
        """Raise :class:`trsplat.errors.TrsplatError` when the kernels cannot run here."""

    def device(self, like: torch.Tensor) -> torch.device:
        """Where the kernels run for inputs on ``like``'s device."""

    def run_forward(self, means2d, conics, features, opacities, background, splat_ids,
                    tile_offsets, launch: Launch) -> Tensors:
        """(image (H, W, C) f32, t_final (H, W), n_used (H, W) int32 last contributor)."""

    def run_jvp(self, means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                tangents: tuple, launch: Launch) -> Tensors:
        """``run_forward``'s outputs + image_dot (H, W, C), alpha_dot (H, W), without the
        background's tangent. ``tangents`` = (d_means2d, d_conics, d_features, d_opacities),
        None meaning zero."""

    def run_vjp(self, means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                t_final, n_used, g_image, g_alpha, launch: Launch) -> Tensors:
        """(per-splat gradients (V, 6 + C) f32 with columns [mean xy, conic abc, opacity,
        features], background gradient (C,) f32)."""


@dataclass(frozen=True)
class Launch:
    """The non-tensor inputs of a kernel call: the kernel set, the tile grid and the image size."""

    kernels: KernelSet
    grid_x: int
    grid_y: int
    width: int
    height: int


def is_functorch(t: torch.Tensor) -> bool:
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def primal(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` without a forward-AD tangent (functorch-wrapped tensors and None are left alone)."""
    if t is None or is_functorch(t):
        return t
    return fwAD.unpack_dual(t).primal


class Fused:
    """Primal and tangent outputs precomputed by the fused JVP kernel (forward_ad fast path)."""

    __slots__ = ("primal", "tangent")

    def __init__(self, primal: Tensors, tangent: Tensors):
        self.primal = primal
        self.tangent = tangent


def _forward_outputs(image, t_final, n_used) -> Tensors:
    return image, 1.0 - t_final.to(torch.float32), t_final, n_used


def _run_jvp(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
             tangents, launch: Launch) -> tuple[Tensors, Tensors]:
    """(image, alpha, t_final, n_used) and their tangents (image_dot, alpha_dot).

    ``tangents`` = (d_means2d, d_conics, d_features, d_opacities, d_background), None = zero.
    """
    dm, dc, df, do, dbg = tangents
    image, t_final, n_used, image_dot, alpha_dot = launch.kernels.run_jvp(
        means2d, conics, features, opacities, background, splat_ids, tile_offsets,
        (dm, dc, df, do), launch)
    if dbg is not None:
        image_dot = image_dot + t_final.to(torch.float32)[..., None] * dbg.detach().to(torch.float32)
    return _forward_outputs(image, t_final, n_used), (image_dot, alpha_dot)


class _Composite(torch.autograd.Function):
    """Float32 inputs on the kernels' device; see :func:`composite_native`."""

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                launch, fused):
        if fused is not None:
            return fused.primal
        return _forward_outputs(*launch.kernels.run_forward(
            means2d, conics, features, opacities, background, splat_ids, tile_offsets, launch))

    @staticmethod
    def setup_context(ctx, inputs, output):
        means2d, conics, features, opacities, background, splat_ids, tile_offsets, launch, fused = inputs
        _, _, t_final, n_used = output
        ctx.mark_non_differentiable(t_final, n_used)
        ctx.save_for_backward(means2d, conics, features, opacities, background, splat_ids,
                              tile_offsets, t_final, n_used)
        ctx.save_for_forward(means2d, conics, features, opacities, background, splat_ids,
                             tile_offsets)
        ctx.launch = launch
        ctx.fused = fused
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, g_image, g_alpha, _g_t, _g_n):
        launch = ctx.launch
        if g_image is None and g_alpha is None:
            return (None,) * 9
        *inputs, t_final, n_used = ctx.saved_tensors
        features = inputs[2]
        shape, dev = (launch.height, launch.width), features.device
        if g_image is None:
            g_image = torch.zeros(shape + (features.shape[1],), dtype=torch.float32, device=dev)
        if g_alpha is None:
            g_alpha = torch.zeros(shape, dtype=torch.float32, device=dev)
        # Saved inputs are still dual tensors when a JVP forward is followed by this backward
        # (the optimizer's pattern): drop the tangents, the VJP does not need them.
        grads = _CompositeVJP.apply(*map(primal, inputs), t_final, n_used, primal(g_image),
                                    primal(g_alpha), launch)
        return tuple(g if need else None for g, need in zip(grads, ctx.needs_input_grad)) + (None,) * 4

    @staticmethod
    def jvp(ctx, dm, dc, df, do, dbg, *_rest):
        fused = ctx.fused
        if fused is not None and fused.tangent is not None:
            img_d, alpha_d = fused.tangent
            ctx.fused = None
        else:
            img_d, alpha_d = _CompositeJVP.apply(*ctx.saved_tensors, dm, dc, df, do, dbg, ctx.launch)
        return img_d, alpha_d, None, None

    @staticmethod
    def vmap(info, in_dims, *args):
        raise NotImplementedError(f"the {args[-2].kernels.name} compositing backend does not "
                                  "support vmap")


class _CompositeVJP(torch.autograd.Function):
    """The VJP kernel as its own Function, so torch.func transforms see plain tensors.

    Its own backward (double backward of compositing) is not implemented.
    """

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                t_final, n_used, g_image, g_alpha, launch):
        per_splat, g_bg = launch.kernels.run_vjp(
            means2d, conics, features, opacities, background, splat_ids, tile_offsets, t_final,
            n_used, g_image, g_alpha, launch)
        return (per_splat[:, 0:2].contiguous(), per_splat[:, 2:5].contiguous(),
                per_splat[:, 6:].contiguous(), per_splat[:, 5].contiguous(), g_bg)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[-1].kernels.name

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(f"double backward through the {ctx.name} compositing backend "
                                  "is not supported; use backend='reference'")


class _CompositeJVP(torch.autograd.Function):
    """The JVP kernel (primal recomputed, tangent returned) as a Function, for torch.func."""

    @staticmethod
    def forward(means2d, conics, features, opacities, background, splat_ids, tile_offsets,
                dm, dc, df, do, dbg, launch):
        _, tangent = _run_jvp(means2d, conics, features, opacities, background, splat_ids,
                              tile_offsets, (dm, dc, df, do, dbg), launch)
        return tangent

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.name = inputs[-1].kernels.name

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(f"reverse mode through the JVP of the {ctx.name} compositing "
                                  "backend is not supported; use backend='reference'")


def _fused_forward_ad(tensors, splat_ids, tile_offsets, launch: Launch) -> Fused | None:
    """If some input is a forward_ad dual tensor, run the fused primal + tangent kernel."""
    if any(is_functorch(t) for t in tensors):
        return None
    tangents = [fwAD.unpack_dual(t).tangent for t in tensors]
    if all(t is None for t in tangents):
        return None
    primals = [fwAD.unpack_dual(t).primal for t in tensors]
    return Fused(*_run_jvp(*primals, splat_ids, tile_offsets, tangents, launch))


def composite_native(
    kernels: KernelSet,
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
    """Composite V splats into an image with ``kernels``.

    Same arguments (after ``kernels``) and results as
    :func:`~trsplat.render.composite_reference.composite_reference`: image (H, W, C) =
    Σ f·α·T + T_final·background and alpha (H, W) = 1 − T_final. ``max_pairs`` is only used by
    the float64 fallback to the reference compositor.

    Raises:
        TrsplatError: the kernels cannot run here (``kernels.check()``).
    """
    if any(t.dtype == torch.float64 for t in (means2d, conics, features, opacities)):
        return composite_reference(means2d, conics, features, opacities, bins, width, height,
                                   background, max_pairs=max_pairs)
    kernels.check()
    out_dtype, out_device = features.dtype, features.device
    dev = kernels.device(means2d)
    f32 = [t.to(dev, torch.float32) for t in (means2d, conics, features, opacities)]
    bg = torch.as_tensor(background).to(dev, torch.float32)
    if bg.ndim == 0:
        bg = bg.expand(features.shape[1])
    launch = Launch(kernels, int(bins.grid_x), int(bins.grid_y), int(width), int(height))
    splat_ids = bins.splat_ids.detach().to(dev).contiguous()
    tile_offsets = bins.tile_offsets.detach().to(dev).contiguous()
    if tile_offsets.numel() != launch.grid_x * launch.grid_y + 1:
        raise ValueError(f"tile_offsets has {tile_offsets.numel()} entries, expected "
                         f"{launch.grid_x * launch.grid_y + 1}")
    tensors = f32 + [bg]
    fused = _fused_forward_ad(tensors, splat_ids, tile_offsets, launch)
    image, alpha, _, _ = _Composite.apply(*tensors, splat_ids, tile_offsets, launch, fused)
    if out_dtype != torch.float32 or out_device != image.device:
        image = image.to(out_device, out_dtype)
        alpha = alpha.to(out_device, out_dtype)
    return image, alpha
