"""numba kernels of the CPU fast path of :func:`trsplat.optim.hellinger.clip_step`.

:func:`~trsplat.optim.hellinger.clip_step` has two implementations that return bit-identical
results (``docs/trust_region.md``, "Implementations"; the calls into this module are in
:mod:`trsplat.optim.cpu_clip`).  Everything that needs a function torch does not round exactly
on the CPU (exp, log, log1p, sinh, sigmoid and also sqrt, which goes through MKL/Sleef there) is
computed by shared torch code; the kernels here do the rest, the part that costs time:

* :func:`radicands`: from the quaternion, its norm and the per-Gaussian terms exp(∓2 ln s),
  sinh²(ln s_i − ln s_j) and −ln(1 − ε/α_s), the squared position and rotation radii (rotation
  matrix, diagonal of Σ⁻¹ or Σ, angular velocities, β); torch takes the square roots;
* the ``clip_*`` kernels (stage 2): colour boxes, SH-rest radius and box, NaN → 0, −0 → +0,
  lo ≤ 0 ≤ hi, the inward rounding to the step's dtype and the clip itself, writing the clipped
  step and the ``on_bound`` mask.

Bit-for-bit identity with the torch reference holds by construction, not by tolerance: every
operation here is exactly rounded in IEEE arithmetic (+, −, ×, ÷, comparisons, min/max,
float64 → float32 conversion and bit-pattern steps; ``fastmath`` is off, so there is no FMA
contraction) and is written in the same order as the torch expressions of
:mod:`trsplat.optim.hellinger`, so every intermediate has the same value.  NaN propagation
follows torch (``minimum``/``clamp_min`` propagate NaN).  Where torch's result may be either
signed zero (its vector body and scalar tail differ on ``min(+0, −0)``), the bounds are
canonicalised to +0 in both implementations, so no result depends on the sign of a zero tie.

Layout: ``prange`` over Gaussians (:func:`radicands`), over coordinates (flat loops over
contiguous memory, which LLVM vectorises), or over blocks of :data:`_BLOCK` Gaussians (SH rest,
see :func:`clip_color_rest`).  Params and steps may be float32 or float64 (one compiled
specialisation per combination, cached on disk); all arrays are C-contiguous and outputs are
written in place.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

_JIT = dict(parallel=True, fastmath=False, error_model="numpy", cache=True)
_HELPER = dict(fastmath=False, error_model="numpy", cache=True)

_BLOCK = 64
"""Gaussians per SH-rest block (the block's per-coordinate radii: 64·45 float64 = 23 KiB)."""

_F32_DENORM_MIN_BITS = np.int32(1)                 # bit pattern of +1.4e-45
_F32_NEG_DENORM_MIN_BITS = np.int32(-2147483647)   # 0x80000001 = −1.4e-45


# ----------------------------------------------------------------------------------------------
# scalar helpers
#
# Whether a coordinate is clipped is unpredictable, and a mispredicted branch per coordinate
# costs more than the whole computation; x86 has no conditional move for floats, so a float
# ``a if c else b`` usually becomes a branch.  The hot paths therefore use numba's builtin
# ``max``/``min`` for floats, which are single selects (``max(a, b)`` is exactly
# ``b if b > a else a`` and ``min(a, b)`` is ``b if b < a else a``: maxsd/minsd), and integer
# selects on bit patterns.  The remaining branches test for NaN (rare, hence predictable) or
# loop-invariant options.
# ----------------------------------------------------------------------------------------------
@njit(**_HELPER)
def _minimum(a, b):
    """torch.minimum: NaN if either argument is NaN (the sign of a zero tie does not matter:
    every bound is canonicalised before use)."""
    m = min(a, b)           # b if b < a else a: NaN when a is NaN
    if b != b:
        m = b
    return m


@njit(**_HELPER)
def _clamp_min(a, lo):
    """torch.clamp_min(a, lo) for a non-NaN ``lo``: NaN stays NaN."""
    return max(a, lo)       # lo if lo > a else a


@njit(**_HELPER)
def _canonical(x):
    """NaN → 0 and −0 → +0 (``hellinger._canonical``); x + 0.0 is x except that −0 + 0 = +0."""
    x = x + 0.0
    if x != x:
        x = 0.0
    return x


@njit(**_HELPER)
def _f32_ceil(x):
    """The smallest float32 ≥ the float64 x (not NaN): round to nearest, then one step up
    (nextafter towards +inf, on the bit pattern) if that went down."""
    t = np.float32(x)
    i = np.int32(t.view(np.int32))
    up = np.int32(i + 1 - 2 * np.int32(t < 0))
    up = _F32_DENORM_MIN_BITS if t == 0 else up
    return np.int32(up if t < x else i).view(np.float32)


@njit(**_HELPER)
def _f32_floor(x):
    """The largest float32 ≤ the float64 x (not NaN)."""
    t = np.float32(x)
    i = np.int32(t.view(np.int32))
    down = np.int32(i - 1 + 2 * np.int32(t < 0))
    down = _F32_NEG_DENORM_MIN_BITS if t == 0 else down
    return np.int32(down if t > x else i).view(np.float32)


@njit(**_HELPER)
def _f32_toward_zero(x):
    """The float32 nearest to the float64 x (not NaN) in the direction of 0: for x ≤ 0 this is
    :func:`_f32_ceil`, for x ≥ 0 :func:`_f32_floor` (a rounded t ≠ 0 beyond x moves one step
    back, which is bits − 1 for either sign), in fewer operations."""
    t = np.float32(x)
    i = np.int32(t.view(np.int32))
    return np.int32(i - np.int32(abs(np.float64(t)) > abs(x))).view(np.float32)


def _ceil_to(x, like):
    """The smallest value of ``like``'s type ≥ the float64 ``x`` (jit only)."""
    raise NotImplementedError


def _floor_to(x, like):
    """The largest value of ``like``'s type ≤ the float64 ``x`` (jit only)."""
    raise NotImplementedError


def _toward_zero_to(x, like):
    """The value of ``like``'s type nearest to the float64 ``x`` towards 0 (jit only)."""
    raise NotImplementedError


def _zero_like(like):
    """+0 of ``like``'s type (jit only)."""
    raise NotImplementedError


def _by_step_type(f32_impl):
    """Overload template: ``f32_impl`` for float32 steps, the identity for float64 steps."""
    def typer(x, like):
        if like == types.float32:
            return lambda x, like: f32_impl(x)
        if like == types.float64:
            return lambda x, like: x
        return None
    return typer


overload(_ceil_to, jit_options=_HELPER)(_by_step_type(_f32_ceil))
overload(_floor_to, jit_options=_HELPER)(_by_step_type(_f32_floor))
overload(_toward_zero_to, jit_options=_HELPER)(_by_step_type(_f32_toward_zero))


@overload(_zero_like, jit_options=_HELPER)
def _zero_like_impl(like):
    if like == types.float32:
        return lambda like: np.float32(0.0)
    if like == types.float64:
        return lambda like: 0.0
    return None


@njit(**_HELPER)
def _clip0(s, lo, hi):
    """(clipped step, on_bound) of one coordinate for canonical bounds lo ≤ 0 ≤ hi.

    The reference (``hellinger._round_inward`` and ``_clip_torch``): lo_t = ceil(lo) and
    hi_t = floor(hi) in the step's type (for lo ≤ 0 ≤ hi: the roundings towards 0, which cannot
    cross); s < lo_t → lo_t, s > hi_t → hi_t, NaN → +0, else s itself, bit for bit.  Computed
    as the clamp in float64 followed by one rounding towards 0, which is the same: for a value
    s of the step's type s < lo ⇔ s < lo_t (lo_t is the smallest such value ≥ lo; likewise
    above), and s itself converts back exactly (−0 included: numba's max(a, b) is
    ``b if b > a else a`` and min(a, b) is ``b if b < a else a``).
    """
    x = np.float64(s)
    out = _toward_zero_to(min(max(x, lo), hi), s)
    hit = (x < lo) | (x > hi)
    if s != s:
        out = _zero_like(s)
    return out, hit


@njit(**_HELPER)
def _clip_general(s, lo, hi, keep_zero):
    """:func:`_clip0` for any canonical bounds (opacity with ``opacity_box_mode="kernel"``):
    lo_t = ceil(lo), hi_t = floor(hi), lo_t = hi_t if they cross; with ``keep_zero`` a zero
    step is returned as is and not counted."""
    hi_t = _floor_to(hi, s)
    lo_t = min(_ceil_to(lo, s), hi_t)
    out = min(max(s, lo_t), hi_t)
    hit = (s < lo_t) | (s > hi_t)
    if s != s:
        out = _zero_like(s)
    if keep_zero and s == 0:
        out = s
        hit = False
    return out, hit


@njit(**_HELPER)
def _symmetric_bounds(radius):
    """Canonical [lo, hi] = [−radius, radius] with lo ≤ 0 ≤ hi."""
    return min(_canonical(-radius), 0.0), max(_canonical(radius), 0.0)


@njit(**_HELPER)
def _dc_interval(dc, down_h, up_h, sh_c0, color_box):
    """(down, up) of one DC coefficient: the Hellinger radii intersected with C ∈ [0, 1]."""
    if not color_box:
        return down_h, up_h
    color = sh_c0 * np.float64(dc) + 0.5
    up = _minimum(up_h, _clamp_min((1.0 - color) / sh_c0, 0.0))
    down = _minimum(down_h, _clamp_min(color / sh_c0, 0.0))
    return down, up


@njit(**_HELPER)
def _rest_radius(dc, down_h, up_h, sh_c0, color_box, from_box, rest_ratio):
    """Canonical SH-rest radius of one channel, min(up, down)/rest_ratio of the boxed
    (``from_box``) or the Hellinger DC interval, before the coefficient's own box."""
    if from_box:
        down, up = _dc_interval(dc, down_h, up_h, sh_c0, color_box)
        base = _minimum(up, down)
    else:
        base = _minimum(up_h, down_h)
    return _canonical(base / rest_ratio)


@njit(**_HELPER)
def _beta(a, b, c, f, sh0, sh1, sh2):
    """β = 8·((ω₂²·sh2 + ω₁²·sh1) + ω₀²·sh0), ω_k = (a, b, c)_k·f (``hellinger._rotation_beta``)."""
    o0 = a * f
    o1 = b * f
    o2 = c * f
    return 8.0 * ((o2 * o2 * sh2 + o1 * o1 * sh1) + o0 * o0 * sh0)


# ----------------------------------------------------------------------------------------------
# stage 1: radicands of the position and rotation radii
# ----------------------------------------------------------------------------------------------
@njit(**_JIT)
def radicands(quats, norm, e, nl_pos, sinh2, nl_rot, kernel_bounds, pos_out, rot_out):
    """Squared position and rotation radii; a part whose output has 0 rows is skipped.

    pos_out (N,3): η_c² = 8·var_c·nl_pos, var_c = 1/Σ_k R_ck² e_k (kernel) or Σ_k R_ck² e_k
    (paper) (``hellinger._position_radicand``).  rot_out (N,4): thr_c² = (8/max(β_c, 1e-20))·nl_rot
    before the cap (``hellinger._rotation_radicand``), with |ω_c| = (2/‖q̃‖)·(|x|,|y|,|z|),
    (|w|,|z|,|y|), (|z|,|w|,|x|), (|y|,|x|,|w|) for c = w, x, y, z.
    """
    do_pos = pos_out.shape[0] > 0
    do_rot = rot_out.shape[0] > 0
    for i in prange(quats.shape[0]):
        n = norm[i]
        w = np.float64(quats[i, 0]) / n
        x = np.float64(quats[i, 1]) / n
        y = np.float64(quats[i, 2]) / n
        z = np.float64(quats[i, 3]) / n
        if do_pos:
            # rotation matrix as hellinger._rotation_matrix (3DGS build_rotation)
            r00 = 1.0 - 2.0 * (y * y + z * z)
            r01 = 2.0 * (x * y - w * z)
            r02 = 2.0 * (x * z + w * y)
            r10 = 2.0 * (x * y + w * z)
            r11 = 1.0 - 2.0 * (x * x + z * z)
            r12 = 2.0 * (y * z - w * x)
            r20 = 2.0 * (x * z - w * y)
            r21 = 2.0 * (y * z + w * x)
            r22 = 1.0 - 2.0 * (x * x + y * y)
            e0 = e[i, 0]
            e1 = e[i, 1]
            e2 = e[i, 2]
            s0 = (r00 * r00 * e0 + r01 * r01 * e1) + r02 * r02 * e2
            s1 = (r10 * r10 * e0 + r11 * r11 * e1) + r12 * r12 * e2
            s2 = (r20 * r20 * e0 + r21 * r21 * e1) + r22 * r22 * e2
            if kernel_bounds:
                s0 = 1.0 / s0
                s1 = 1.0 / s1
                s2 = 1.0 / s2
            pos_out[i, 0] = 8.0 * s0 * nl_pos[i]
            pos_out[i, 1] = 8.0 * s1 * nl_pos[i]
            pos_out[i, 2] = 8.0 * s2 * nl_pos[i]
        if do_rot:
            f = (1.0 / n) * 2.0
            a = sinh2[i, 0]
            b = sinh2[i, 1]
            c = sinh2[i, 2]
            g = nl_rot[i]
            rot_out[i, 0] = 8.0 * (1.0 / max(_beta(x, y, z, f, a, b, c), 1e-20)) * g
            rot_out[i, 1] = 8.0 * (1.0 / max(_beta(w, z, y, f, a, b, c), 1e-20)) * g
            rot_out[i, 2] = 8.0 * (1.0 / max(_beta(z, w, x, f, a, b, c), 1e-20)) * g
            rot_out[i, 3] = 8.0 * (1.0 / max(_beta(y, x, w, f, a, b, c), 1e-20)) * g


# ----------------------------------------------------------------------------------------------
# stage 2: clip kernels, one per parameter type
# ----------------------------------------------------------------------------------------------
@njit(**_JIT)
def clip_symmetric(radius, step, out, hit):
    """means (N,3), quats (N,4): [−radius, radius] per coordinate (radius shaped like the step)."""
    r = radius.reshape(-1)
    st = step.reshape(-1)
    ot = out.reshape(-1)
    ht = hit.reshape(-1)
    for j in prange(st.size):
        lo, hi = _symmetric_bounds(r[j])
        ot[j], ht[j] = _clip0(st[j], lo, hi)


@njit(**_JIT)
def clip_interval(lo, hi, kernel_opacity, step, out, hit):
    """log_scales, opacity_logits: [lo, hi] per coordinate (bounds shaped like the step).
    ``kernel_opacity``: opacity with ``opacity_box_mode="kernel"`` (the interval need not contain
    0, a zero step stays zero)."""
    a = lo.reshape(-1)
    b = hi.reshape(-1)
    st = step.reshape(-1)
    ot = out.reshape(-1)
    ht = hit.reshape(-1)
    if kernel_opacity:
        for j in prange(st.size):
            ot[j], ht[j] = _clip_general(st[j], _canonical(a[j]), _canonical(b[j]), True)
    else:
        for j in prange(st.size):
            ot[j], ht[j] = _clip0(st[j], min(_canonical(a[j]), 0.0), max(_canonical(b[j]), 0.0))


@njit(**_JIT)
def clip_color_dc(dc, down_h, up_h, sh_c0, color_box, step, out, hit):
    """sh_dc: the Hellinger radii (down_h, up_h) and the colour box C ∈ [0, 1] (all arrays shaped
    like the step)."""
    d = dc.reshape(-1)
    dn = down_h.reshape(-1)
    up = up_h.reshape(-1)
    st = step.reshape(-1)
    ot = out.reshape(-1)
    ht = hit.reshape(-1)
    for j in prange(st.size):
        down, upper = _dc_interval(d[j], dn[j], up[j], sh_c0, color_box)
        ot[j], ht[j] = _clip0(st[j], min(_canonical(-down), 0.0), max(_canonical(upper), 0.0))


@njit(**_JIT)
def clip_color_rest(dc, down_h, up_h, rest, sh_c0, color_box, from_box, rest_ratio, step, out, hit):
    """sh_rest as (N, 3K) (channel = column mod 3): radius (DC radius)/rest_ratio, box
    [−0.5, 0.5] on the coefficient.

    Per block of Gaussians the canonical per-channel radii t_c are written out per coordinate, so
    that the main loop runs over contiguous memory and vectorises.  Per coordinate (torch:
    lo = −min(t, max(sh + 0.5, 0)), hi = min(t, max(0.5 − sh, 0)), canonicalised) this computes
    the same values with max(0, v), which maps a NaN coefficient to 0 exactly as the
    canonicalisation of the torch result does, so no NaN test is left in the loop.
    """
    n, m = step.shape
    for blk in prange((n + _BLOCK - 1) // _BLOCK):
        i0 = blk * _BLOCK
        i1 = min(n, i0 + _BLOCK)
        radius = np.empty((i1 - i0) * m)
        for i in range(i0, i1):
            t0 = _rest_radius(dc[i, 0], down_h[i, 0], up_h[i, 0], sh_c0, color_box, from_box, rest_ratio)
            t1 = _rest_radius(dc[i, 1], down_h[i, 1], up_h[i, 1], sh_c0, color_box, from_box, rest_ratio)
            t2 = _rest_radius(dc[i, 2], down_h[i, 2], up_h[i, 2], sh_c0, color_box, from_box, rest_ratio)
            row = (i - i0) * m
            for j in range(0, m, 3):
                radius[row + j] = t0
                radius[row + j + 1] = t1
                radius[row + j + 2] = t2
        st = step[i0:i1].reshape(-1)
        sh = rest[i0:i1].reshape(-1)
        ot = out[i0:i1].reshape(-1)
        ht = hit[i0:i1].reshape(-1)
        if color_box:
            for j in range(radius.size):
                t = radius[j]
                v = np.float64(sh[j])
                lo = -min(max(0.0, v + 0.5), t) + 0.0
                hi = min(max(0.0, 0.5 - v), t) + 0.0
                ot[j], ht[j] = _clip0(st[j], min(lo, 0.0), max(hi, 0.0))
        else:
            for j in range(radius.size):
                t = radius[j]
                ot[j], ht[j] = _clip0(st[j], min(-t + 0.0, 0.0), max(t, 0.0))
