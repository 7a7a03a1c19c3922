r"""Hellinger trust region of 3DGS²-TR: per-coordinate radii and step clipping in raw space.

Every function here is vectorised over the N Gaussians (no Python loop over Gaussians) and
works on the raw 3DGS parameters of :mod:`trsplat.gaussians`: ``means`` (N,3), ``log_scales``
(N,3), ``quats`` (N,4) unnormalised (w,x,y,z), ``opacity_logits`` (N,), ``sh_dc`` (N,1,3),
``sh_rest`` (N,K,3) with any K (the authors' kernel assumes K = 15).

Geometry (spec §2.1)
--------------------
A Gaussian is G(z) = α·C·exp(−½(z−µ)ᵀΣ⁻¹(z−µ)) with Σ = R diag(s²) Rᵀ (R = the usual rotation
matrix of the normalised quaternion, columns = body axes; s = exp(log_scales)).  Its mass is
Z = α·det S (colour: Z = α·C·det S), i.e. ∫G/(2π)^{3/2}.  We use the *full* convention of eq. (6):

    H²(G, G′) = Z + Z′ − 2·sqrt(Z Z′)·det(Σ)^¼·det(Σ′)^¼ / det(Σ̄)^½ · exp(−Δµᵀ Σ̄⁻¹ Δµ / 8),

Σ̄ = (Σ+Σ′)/2, which equals ∫(√G − √G′)² dz / (2π)^{3/2} (:func:`hellinger_sq`).  The trust region
asks H²(G, G′)/det S < ε for a perturbation of one coordinate alone, and each coordinate is then
clipped independently (no joint projection).

Radii (``bounds="kernel"``, the default: the authors' CUDA kernel, spec §2.4)
---------------------------------------------------------------------------------
With α_s = clamp(α, *mass_clamp*), budgets ε_p = ε_s = ε_c = ε/3 and ε_q = ε/4 (``split_budget``;
all equal to ε without it) and ε_op = ``opacity_eps_scale``·ε:

* position  η_c = sqrt(−8/(Σ⁻¹)_cc · ln(1 − ε_p/α_s)) (ln argument floored at 1e-20, ln ≤ 0);
* scale     thr_c = s_c·sqrt(4ε_s/(3α_s)) (= (2/3)s_c·sqrt(ε/α_s) with the split), applied in
  linear space: new scale ∈ [s − thr, s + thr];
* rotation  thr_c = min(sqrt(−(8/β_c)·ln(max(1 − ε_q/α_s, 1e-20))), ‖q̃‖·quat_norm_cap), with
  β_c = 2‖S ∂_cE S⁻¹‖²_F + 2 tr(∂²_cE) of spec §2.2, E = RᵀR(q̃ + Δ e_c) − I (body frame; this
  makes T(Δ) = ‖S(I+E)S⁻¹‖²_F = tr(Σ Σ′⁻¹) exactly).  Because Rᵀ∂_cR is skew and the path stays on
  SO(3), tr ∂²_cE = −‖∂_cE‖²_F and the formula reduces (exactly, not approximately) to the
  cancellation-free  β_c = 8·Σ_{i<j} ω_{c,k(ij)}²·sinh²(ln s_i − ln s_j), where ω_c =
  (2/‖q̃‖)·vec(q̂* ⊗ e_c) is the body angular velocity of the coordinate direction; this is what
  :func:`rotation_beta` computes (the tests check it against the literal §2.2 matrices and against
  an autograd second derivative).  β_c is floored at 1e-20.  The quaternion is not renormalised;
* opacity   thr = sqrt(4·α·ε_op) with the *real* α, applied in linear space, intersected with the
  box ``opacity_box`` = [1e-5, 1 − 1e-5];
* DC colour thr = sqrt(4·C·ε_c/α_s)/SH_C0 per channel, C = SH_C0·dc + 0.5, with the box C ∈ [0, 1];
* SH rest   radius = (DC radius)/``rest_ratio`` (20), box [−0.5, 0.5].  Heuristic, no derivation.

``bounds="paper"`` uses the constants printed in the paper (§2.2): Σ_cc instead of 1/(Σ⁻¹)_cc for
position and s·sqrt(2ε/α) for scale; opacity, colour and rotation have the same form.  The split,
mass clamp, caps and boxes are independent knobs; :meth:`TrustRegionConfig.paper_literal` turns
them all off (except the opacity box, which keeps logits finite; the paper has no SH-rest rule, so
the DC/20 radius stays).  :meth:`TrustRegionConfig.kernel_exact` reproduces the kernel's quirks.

Decisions on the kernel's pathologies (spec §2.7), each a documented option
------------------------------------------------------------------------------
1. **Frozen colour channels** (``color_floor``, default 1/255).  The kernel computes the radius from
   max(C, 0), so a channel with C ≤ 0 has radius 0 for ever (DC and all 15 rest coefficients); the
   toy run of §2.8 ended with 20-40 % of DC channels stuck at C ≤ 0.  We compute the radius from
   max(C, color_floor): a channel darker than one 8-bit level is visually black, so giving it the
   radius of a 1/255 channel costs nothing visible and lets it move (upward; the box still stops it
   going further below 0).  Price: below the floor the Hellinger bound is not met (H²/det S up to
   α·ΔC; see the table).  ``color_floor=0`` reproduces the kernel.  ``mass_bounds="exact"``
   (below) unfreezes too, without violating the bound, but at the Hellinger speed (√C grows by
   sqrt(ε_c/α_s) per step).
   Related: the kernel's rest radius is min(up, down)/20 with the *boxed* DC up/down, so the rest
   coefficients also freeze when C ≥ 1 (and when C ≤ 0).  We use the Hellinger DC radius before
   the box (``rest_radius_from_box=False``); ``True`` reproduces the kernel.  At C ≥ 1 the DC itself
   can only decrease, which is simply the [0, 1] box and is kept.
2. **Opacity box reversing a step** (``opacity_box_mode``, default ``"shrink"``).  The kernel clamps
   the new opacity into the box even when the current α is outside it, so a tiny step can become
   a large one of the opposite sign (raw −15, step −1e-3 → +3.49).  Default: every raw interval
   contains 0, a clipped step is min(|step|, radius) in the step's own direction; a step that would
   move α further out of the box becomes 0, a step back towards the box is allowed within the
   Hellinger radius.  ``"kernel"`` reproduces the kernel (including "a step of exactly 0 stays 0").
3. **Scale collapse** (``scale_min_ratio``, default 0.5).  When thr ≥ s (ε/α_s ≥ 9/4 for the kernel
   constants, ε/α_s ≥ ½ for the paper's) the linear lower bound s − thr ≤ 0 and a large negative
   step sends the scale to 0 (raw → −∞).  We keep the new scale ≥ scale_min_ratio·s (at most halve a
   scale per step).  With the default mass clamp and ε ≤ 1e-3 the guard never binds (thr ≤ 0.21 s).
   ``None`` reproduces the kernel (lower raw bound −∞ once thr ≥ s).
4. **float32 round trips** (not configurable: reproducing a rounding bug has no use).  The kernel
   rewrites every scale/opacity step through exp/log or sigmoid/logit in float32, which quantises
   or even flips small steps.  We compute the raw-space interval [lo, hi] in float64 directly as
   differences (log1p(±thr/s), log1p(d/α) − log1p(−d/(1−α))), round it inwards (towards zero)
   to the step's dtype and clip the step to it: a step inside the interval is returned
   bit-for-bit unchanged and a clipped step never exceeds the float64 radius.
5. **Quaternion explosion** (``quat_norm_cap``, default 0.1).  For (near-)isotropic scales β_c ≈ 0,
   the Hellinger rotation radius is ~1e10 and raw quaternion norms explode (§2.8).  The kernel's
   extra cap ‖q̃‖·0.1 is kept on by default; ``None`` disables it.
6. **SH_C0** (``sh_c0``, default the exact 0.28209479177387814 of the renderer; the kernel's 0.282
   is available for comparisons).  With 0.282 a channel that renders black (dc = −0.5/SH_C0) is
   seen as C = 1.5e-4 > 0, so the constant matters exactly where decision 1 does.
7. **Linearised opacity/colour bounds** (``mass_bounds``, default ``"linear"`` = kernel/paper).
   sqrt(4αε) and sqrt(4Cε/α) are second-order approximations; for large relative steps the exact
   H² exceeds the budget (opacity up to 4ε_op when α ≈ 4ε_op, colour up to 4ε_c when
   C ≈ 4ε_c/α_s).  ``"exact"`` uses the exact Hellinger intervals instead, which for a pure mass
   change are closed form: √α′ ∈ [√α − √ε_op, √α + √ε_op] and √C′ ∈ √C ± sqrt(ε_c/α_s).
8. **Non-finite input.**  A NaN step becomes 0 (a NaN must never reach the parameters; 0 is the
   "no information" step).  ±inf steps are clipped to the radius like any other large step.
   A Gaussian whose radius cannot be computed (NaN parameters) gets the interval [0, 0].
   A zero step always stays exactly zero (every interval contains 0).

Budget actually used (H²/det S in units of ε for one raw coordinate moved onto its radius, kernel
bounds with the split).  Small-step limits: position 2/3 (exact at every step size), scale 1/3,
rotation 1/4, opacity ε_op/ε = 1, colour 1/3.  Measured worst cases over 1000 random Gaussians,
every coordinate, both signs (``tests/test_hellinger.py``; "typical": α ∈ [0.047, 0.98],
C ∈ [0.05, 0.95], axis ratios ≤ e³; "extreme": α ∈ [6e-6, 1 − 6e-6], C log-uniform in
[1/255, 1], axis ratios ≤ e⁸):

========  ===============  ===============  ===============  =========================================
type      typical          extreme          extreme, no      analytic worst case
          ε = 1e-3 / 1e-5  ε = 1e-3 / 1e-5  mass clamp
========  ===============  ===============  ===============  =========================================
position  0.667 / 0.667    0.667 / 0.667    0.667 / 0.667    2/3, exact
scale     0.350 / 0.335    0.369 / 0.337    0.418 / 0.417    0.418 with the ½ guard (4/9 without)
rotation  0.293 / 0.298    0.302 / 0.274    0.421 / 0.294    1/4 small steps; ≈ 0.25/(1 − cap)² = 0.31
                                                             at capped steps (quaternion normalisation);
                                                             ≤ 2α ≤ ½ when α ≤ ε_q (ln guard, no clamp)
opacity   1.178 / 1.015    3.63  / 1.96     3.63  / 1.96     4 (downward, α ≈ 4ε_op); "exact": 1
colour    0.547 / 0.345    1.31  / 0.453    1.32  / 1.33     4/3 (downward, C ≈ 4ε_c/α_s); "exact": 1/3
========  ===============  ===============  ===============  =========================================

Opacity and colour meet the budget only to second order: the exact factor of a downward step is
(1 − sqrt(1 − 2u))²/u² (u = sqrt(ε′/mass)), i.e. 1 + u + O(u²), capped at 4 once the step reaches
0 (u ≥ ½).  Colour channels below ``color_floor`` exceed it by design (decision 1): at C = 0 the
factor is up to 2·sqrt(color_floor·α/(3ε)) (≈ 23 at ε = 1e-5, α = 1).

Implementations (``clip_step(..., backend=...)``)
-------------------------------------------------
``"torch"`` is the vectorised reference (any device).  ``"cpu"`` runs the arithmetic in the numba
kernels of :mod:`trsplat.optim.hellinger_cpu` (an order of magnitude faster); ``"auto"`` (the
default, :data:`clip_backend`) takes it whenever :func:`cpu_unsupported_reason` allows (CPU
tensors, float32/float64 params and steps, ``compute_dtype`` float64, standard parameter
shapes; every option of :class:`TrustRegionConfig` is supported) and the reference otherwise.
Both return bit-identical clipped steps and masks, signed zeros included, by construction:

* on the CPU torch rounds exp, log, log1p, sinh and sigmoid, and even sqrt (MKL/Sleef), not
  exactly, and its result may depend on an element's position in the tensor (vector body or
  scalar tail), so numba's libm cannot reproduce them.  They are evaluated by the same torch
  code on identically shaped tensors in both implementations (stage 1, :func:`_radius_table`:
  the per-Gaussian terms, then the square roots of the position and rotation radicands);
* everything else (the position and rotation radicands, i.e. rotation matrix, diagonal of Σ⁻¹
  and β; the boxes, the SH-rest radius, NaN → 0, the inward rounding and the clip: stage 2,
  :func:`_interval` and :func:`_clip_torch`) uses exactly rounded operations only (+, −, ×, ÷,
  min/max, comparisons, float conversion), which the kernels perform in the same order;
* torch's vector and scalar kernels break ``min(+0, −0)`` ties differently, so zero bounds are
  canonicalised to +0, and every interval but opacity's with ``opacity_box_mode="kernel"`` is
  made to contain 0 (which the radii guarantee anyway), so no result depends on a zero's sign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterable, Mapping

import torch
from torch import Tensor

from trsplat.gaussians import SH_C0

__all__ = [
    "KERNEL_SH_C0",
    "TrustRegionConfig",
    "CLIP_BACKENDS",
    "clip_backend",
    "clip_step",
    "cpu_unsupported_reason",
    "step_bounds",
    "radius_position",
    "radius_scale",
    "radius_rotation",
    "radius_opacity",
    "radius_color",
    "rotation_beta",
    "hellinger_sq",
    "gaussian_moments",
    "normalized_hellinger_sq",
]

KERNEL_SH_C0 = 0.282
"""The truncated SH degree-0 constant hard-coded in the authors' trust-region kernel."""

CLIP_BACKENDS = ("auto", "torch", "cpu")
"""Implementations of :func:`clip_step` (see the module docstring, "Implementations")."""

clip_backend = "auto"
"""Default ``backend`` of :func:`clip_step`; set it to ``"torch"`` (or ``"cpu"``) to force one
implementation everywhere, e.g. in tests."""

_LN_FLOOR = 1e-20
_BETA_FLOOR = 1e-20
_PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
# Which raw tensors each parameter type's radius depends on.
RADIUS_INPUTS: dict[str, tuple[str, ...]] = {
    "means": ("log_scales", "quats", "opacity_logits"),
    "log_scales": ("opacity_logits",),
    "quats": ("log_scales", "quats", "opacity_logits"),
    "opacity_logits": ("opacity_logits",),
    "sh_dc": ("sh_dc", "opacity_logits"),
    "sh_rest": ("sh_dc", "sh_rest", "opacity_logits"),
}


@dataclass(frozen=True)
class TrustRegionConfig:
    """Options of the Hellinger trust region (see the module docstring for each decision).

    Attributes:
        bounds: ``"kernel"`` (authors' CUDA kernel constants, default) or ``"paper"`` (the
            constants as printed, spec §2.2).
        split_budget: kernel's ε/3 for position, scale and colour and ε/4 for rotation; ``False``
            gives every type the whole ε (paper-literal).
        opacity_eps_scale: ε_op = opacity_eps_scale·ε (never split).
        mass_clamp: (lo, hi) for α_s = clamp(α, lo, hi) used by every radius except opacity's;
            ``None`` uses α itself (the ln argument is then guarded at 1e-20 when ε ≥ α).
        quat_norm_cap: extra cap ‖q̃‖·cap on every raw quaternion step; ``None`` disables it.
        rest_ratio: SH-rest radius = DC radius / rest_ratio.
        color_box: keep C = SH_C0·dc + 0.5 in [0, 1] and the rest coefficients in [−0.5, 0.5].
        color_floor: the colour radius is computed from max(C, color_floor); 0 = kernel (frozen
            channels at C ≤ 0).
        rest_radius_from_box: ``True`` = kernel, rest radius from the *boxed* DC interval
            (min(up, down)); ``False`` = from the Hellinger DC radius before the box.
        mass_bounds: ``"linear"`` (sqrt(4αε), sqrt(4Cε/α): kernel and paper) or ``"exact"`` (exact
            Hellinger intervals for the pure mass changes of opacity and colour).
        opacity_box: (lo, hi) box for the opacity, 0 < lo < hi < 1.
        opacity_box_mode: ``"shrink"`` (never reverse or enlarge a step) or ``"kernel"``.
        scale_min_ratio: the new scale is kept ≥ ratio·s (0 < ratio < 1); ``None`` = kernel.
        sh_c0: SH degree-0 constant used to convert between DC coefficient and colour.
        compute_dtype: dtype of the internal radius computation (float64 recommended).
    """

    bounds: str = "kernel"
    split_budget: bool = True
    opacity_eps_scale: float = 1.0
    mass_clamp: tuple[float, float] | None = (0.01, 1.0)
    quat_norm_cap: float | None = 0.1
    rest_ratio: float = 20.0
    color_box: bool = True
    color_floor: float = 1.0 / 255.0
    rest_radius_from_box: bool = False
    mass_bounds: str = "linear"
    opacity_box: tuple[float, float] = (1e-5, 1.0 - 1e-5)
    opacity_box_mode: str = "shrink"
    scale_min_ratio: float | None = 0.5
    sh_c0: float = SH_C0
    compute_dtype: torch.dtype = torch.float64

    def __post_init__(self) -> None:
        if self.bounds not in ("kernel", "paper"):
            raise ValueError(f"TrustRegionConfig.bounds must be 'kernel' or 'paper', got {self.bounds!r}")
        if self.mass_bounds not in ("linear", "exact"):
            raise ValueError(f"TrustRegionConfig.mass_bounds must be 'linear' or 'exact', got {self.mass_bounds!r}")
        if self.opacity_box_mode not in ("shrink", "kernel"):
            raise ValueError("TrustRegionConfig.opacity_box_mode must be 'shrink' or 'kernel', "
                             f"got {self.opacity_box_mode!r}")
        if not (math.isfinite(self.opacity_eps_scale) and self.opacity_eps_scale >= 0):
            raise ValueError(f"TrustRegionConfig.opacity_eps_scale must be >= 0, got {self.opacity_eps_scale}")
        if self.mass_clamp is not None:
            lo, hi = self.mass_clamp
            if not (0 < lo <= hi):
                raise ValueError(f"TrustRegionConfig.mass_clamp must satisfy 0 < lo <= hi, got {self.mass_clamp}")
        if self.quat_norm_cap is not None and not self.quat_norm_cap >= 0:
            raise ValueError(f"TrustRegionConfig.quat_norm_cap must be >= 0 or None, got {self.quat_norm_cap}")
        if not self.rest_ratio > 0:
            raise ValueError(f"TrustRegionConfig.rest_ratio must be > 0, got {self.rest_ratio}")
        if not (0 <= self.color_floor < 1):
            raise ValueError(f"TrustRegionConfig.color_floor must be in [0, 1), got {self.color_floor}")
        lo, hi = self.opacity_box
        if not (0 < lo < hi < 1):
            raise ValueError(f"TrustRegionConfig.opacity_box must satisfy 0 < lo < hi < 1, got {self.opacity_box}")
        if self.scale_min_ratio is not None and not (0 < self.scale_min_ratio < 1):
            raise ValueError(f"TrustRegionConfig.scale_min_ratio must be in (0, 1) or None, got {self.scale_min_ratio}")
        if not self.sh_c0 > 0:
            raise ValueError(f"TrustRegionConfig.sh_c0 must be > 0, got {self.sh_c0}")
        if not self.compute_dtype.is_floating_point:
            raise ValueError(f"TrustRegionConfig.compute_dtype must be a float dtype, got {self.compute_dtype}")

    @classmethod
    def kernel_exact(cls, **overrides) -> "TrustRegionConfig":
        """The authors' kernel including its quirks (frozen colours, opacity reversal, scale
        collapse, SH_C0 = 0.282), except for float32 quantisation, which is never reproduced."""
        base = cls(color_floor=0.0, rest_radius_from_box=True, opacity_box_mode="kernel",
                   scale_min_ratio=None, sh_c0=KERNEL_SH_C0)
        return replace(base, **overrides)

    @classmethod
    def paper_literal(cls, **overrides) -> "TrustRegionConfig":
        """The paper's printed bounds with none of the kernel's additions (no split, no mass clamp,
        no quaternion cap, no colour boxes).  The opacity box stays (finite logits) and so do the
        scale-collapse guard and the never-reverse policy.  Without the cap rotations explode in
        training (spec §2.8)."""
        base = cls(bounds="paper", split_budget=False, mass_clamp=None, quat_norm_cap=None,
                   color_box=False)
        return replace(base, **overrides)


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"trust-region eps must be finite and >= 0, got {eps}")
    return eps


def _budgets(eps: float, cfg: TrustRegionConfig) -> dict[str, float]:
    """ε per parameter type: position, scale, colour (ε/3), rotation (ε/4), opacity (ε_op)."""
    eps = _check_eps(eps)
    third, quarter = (eps / 3.0, eps / 4.0) if cfg.split_budget else (eps, eps)
    return {"pos": third, "scale": third, "color": third, "rot": quarter,
            "op": cfg.opacity_eps_scale * eps}


def _alpha(opacity_logits: Tensor, cfg: TrustRegionConfig) -> Tensor:
    """(N,) real opacity α = sigmoid(raw) in the compute dtype."""
    return torch.sigmoid(opacity_logits.to(cfg.compute_dtype))


def _alpha_s_of(alpha: Tensor, cfg: TrustRegionConfig) -> Tensor:
    """(N,) the mass used by the radii: clamp(α, *mass_clamp*) or α (kept > 0)."""
    if cfg.mass_clamp is None:
        return alpha.clamp_min(torch.finfo(alpha.dtype).tiny)
    lo, hi = cfg.mass_clamp
    return alpha.clamp(lo, hi)


def _alpha_s(opacity_logits: Tensor, cfg: TrustRegionConfig) -> Tensor:
    return _alpha_s_of(_alpha(opacity_logits, cfg), cfg)


def _neg_log_one_minus(x: Tensor) -> Tensor:
    """−ln(1 − x) with the kernel's guards: argument floored at 1e-20, ln capped at 0 (so ≥ 0)."""
    return -torch.log((1.0 - x).clamp_min(_LN_FLOOR)).clamp_max(0.0)


def _unit_quats(quats: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(N,4) normalised quaternion and (N,) raw norm ‖q̃‖ (kept > 0), in ``dtype``."""
    norm = _quat_norm(quats, dtype)
    return quats.to(dtype) / norm[:, None], norm


def _rotation_matrix(qhat: Tensor) -> Tensor:
    """(N,3,3) rotation matrix of unit quaternions (w,x,y,z), as 3DGS ``build_rotation``."""
    w, x, y, z = qhat.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1).reshape(*qhat.shape[:-1], 3, 3)


def _logit_shift(alpha: Tensor, one_minus_alpha: Tensor, d: Tensor) -> Tensor:
    """logit(α + d) − logit(α) computed without cancellation, for −α < d < 1 − α."""
    return torch.log1p(d / alpha) - torch.log1p(-d / one_minus_alpha)


def _canonical(x: Tensor) -> Tensor:
    """NaN → 0 and −0 → +0; every other value (±inf included) unchanged."""
    return torch.where(torch.isnan(x) | (x == 0), 0.0, x)


def _round_inward(lo: Tensor, hi: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """[lo, hi] converted to ``dtype`` with lo rounded up and hi rounded down (so the result lies
    inside the exact interval; for lo ≤ 0 ≤ hi this is rounding towards zero).  If they cross (an
    interval that contains no value of ``dtype``, hence not 0: only with
    ``opacity_box_mode="kernel"``), lo = hi."""
    lo_t, hi_t = lo.to(dtype), hi.to(dtype)
    if dtype != lo.dtype:
        low = lo_t.to(lo.dtype) < lo
        if bool(low.any()):
            lo_t = torch.where(low, torch.nextafter(lo_t, torch.full_like(lo_t, math.inf)), lo_t)
        high = hi_t.to(hi.dtype) > hi
        if bool(high.any()):
            hi_t = torch.where(high, torch.nextafter(hi_t, torch.full_like(hi_t, -math.inf)), hi_t)
    return torch.where(lo_t > hi_t, hi_t, lo_t), hi_t


# ----------------------------------------------------------------------------------------------
# radii (physical units, before boxes) -- stage 1 of the clip
#
# The position and rotation radii are square roots of "radicands" that are plain arithmetic on
# a few per-Gaussian transcendental terms (_position_terms, _rotation_terms).  Both
# implementations of the clip compute the terms and the square roots with the same torch calls;
# the radicands are computed either by the explicit elementwise expressions below or by the
# numba kernels of trsplat.optim.hellinger_cpu, which perform the same operations in the same
# order (see the module docstring, "Implementations").
# ----------------------------------------------------------------------------------------------
_OMEGA_INDEX = torch.tensor([[1, 2, 3], [0, 3, 2], [3, 0, 1], [2, 1, 0]])
"""|ω_{c,k}| = (2/‖q̃‖)·|q̂_j| with j = _OMEGA_INDEX[c, k]: the components of vec(q̂* ⊗ e_c),
c = w, x, y, z (up to sign: for c = w they are (−x, −y, −z), x: (w, −z, y), y: (z, w, −x),
z: (−y, x, w))."""


def _quat_norm(quats: Tensor, dtype: torch.dtype) -> Tensor:
    """(N,) raw quaternion norm ‖q̃‖, kept > 0."""
    return torch.linalg.vector_norm(quats.to(dtype), dim=-1).clamp_min(torch.finfo(dtype).tiny)


def _position_terms(log_scales: Tensor, alpha_s: Tensor, eps_p: float,
                    cfg: TrustRegionConfig) -> tuple[Tensor, Tensor]:
    """(e, nl): (N,3) e_k = exp(−2 ln s_k) (kernel: S⁻²) or exp(2 ln s_k) (paper: S²), and (N,)
    nl = −ln(1 − ε_p/α_s)."""
    ls = log_scales.to(cfg.compute_dtype)
    e = torch.exp(-2.0 * ls) if cfg.bounds == "kernel" else torch.exp(2.0 * ls)
    return e, _neg_log_one_minus(eps_p / alpha_s)


def _position_radicand(quats: Tensor, norm: Tensor, e: Tensor, nl: Tensor, cfg: TrustRegionConfig) -> Tensor:
    """(N,3) η_c² = 8·var_c·nl with var_c = 1/Σ_k R_ck² e_k = 1/(Σ⁻¹)_cc (kernel) or
    Σ_k R_ck² e_k = Σ_cc (paper)."""
    r = _rotation_matrix(quats.to(cfg.compute_dtype) / norm[:, None])
    r2 = r * r
    s = (r2[..., 0] * e[:, None, 0] + r2[..., 1] * e[:, None, 1]) + r2[..., 2] * e[:, None, 2]
    var = torch.reciprocal(s) if cfg.bounds == "kernel" else s
    return 8.0 * var * nl[:, None]


def radius_position(log_scales: Tensor, quats: Tensor, opacity_logits: Tensor, eps: float,
                    cfg: TrustRegionConfig = TrustRegionConfig()) -> Tensor:
    """(N,3) Hellinger radius of each world-space mean coordinate, in world units.

    kernel: η_c = sqrt(8/(Σ⁻¹)_cc · (−ln(1 − ε_p/α_s))); paper: Σ_cc in place of 1/(Σ⁻¹)_cc.
    For the kernel form H²/det S = 2α·ε_p/α_s exactly at |Δµ_c| = η_c.
    """
    e, nl = _position_terms(log_scales, _alpha_s(opacity_logits, cfg), _budgets(eps, cfg)["pos"], cfg)
    norm = _quat_norm(quats, cfg.compute_dtype)
    return torch.sqrt(_position_radicand(quats, norm, e, nl, cfg).contiguous())


def _scale_ratio_of(alpha_s: Tensor, eps_s: float, cfg: TrustRegionConfig) -> Tensor:
    """(N,) thr/s: kernel sqrt(4ε_s/(3α_s)), paper sqrt(2ε_s/α_s)."""
    if cfg.bounds == "kernel":
        return torch.sqrt(4.0 * eps_s / (3.0 * alpha_s))
    return torch.sqrt(2.0 * eps_s / alpha_s)


def radius_scale(log_scales: Tensor, opacity_logits: Tensor, eps: float,
                 cfg: TrustRegionConfig = TrustRegionConfig()) -> Tensor:
    """(N,3) radius of each *linear* scale s_c = exp(log_scale_c), in world units.

    kernel: thr_c = s_c·sqrt(4ε_s/(3α_s)) (the exact 2nd-order bound, H²/det S ≈ 3αΔs²/(4s²));
    paper: s_c·sqrt(2ε_s/α_s).  The raw interval is [log(max(1 − thr/s, guard)), log(1 + thr/s)].
    """
    k = _scale_ratio_of(_alpha_s(opacity_logits, cfg), _budgets(eps, cfg)["scale"], cfg)
    return torch.exp(log_scales.to(cfg.compute_dtype)) * k[:, None]


def _scale_interval(alpha_s: Tensor, eps_s: float, cfg: TrustRegionConfig) -> tuple[Tensor, Tensor]:
    """(lo, hi), each (N,): the raw log-scale interval, the same for the three axes."""
    k = _scale_ratio_of(alpha_s, eps_s, cfg)
    hi = torch.log1p(k)
    if cfg.scale_min_ratio is None:
        lo = torch.where(k < 1.0, torch.log1p(-k.clamp_max(1.0)), -math.inf)
    else:
        lo = torch.log1p(-k.clamp_max(1.0 - cfg.scale_min_ratio))
    return lo, hi


def _sinh2(log_scales: Tensor, dtype: torch.dtype) -> Tensor:
    """(N,3) sinh²(ln s_i − ln s_j) for the axis pair {i, j} orthogonal to k = 0, 1, 2."""
    ls = log_scales.to(dtype)
    sh = torch.sinh(torch.stack([ls[:, 1] - ls[:, 2], ls[:, 0] - ls[:, 2], ls[:, 0] - ls[:, 1]], dim=1))
    return sh * sh


def _rotation_beta(quats: Tensor, norm: Tensor, sinh2: Tensor, dtype: torch.dtype) -> Tensor:
    """(N,4) β_c = 8·Σ_k ω_{c,k}²·sinh2_k (see :func:`rotation_beta`), summed k = 2, 1, 0."""
    qhat = quats.to(dtype) / norm[:, None]
    om = qhat[:, _OMEGA_INDEX.to(qhat.device)] * (torch.reciprocal(norm) * 2.0)[:, None, None]
    om2 = om * om
    return 8.0 * ((om2[..., 2] * sinh2[:, None, 2] + om2[..., 1] * sinh2[:, None, 1])
                  + om2[..., 0] * sinh2[:, None, 0])


def rotation_beta(log_scales: Tensor, quats: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """(N,4) β_c = d²T/dΔ² at Δ = 0 for T(Δ) = ‖S(I+E(Δ))S⁻¹‖²_F, c ∈ (w, x, y, z) raw coordinates.

    Equal to 2‖S ∂_cE S⁻¹‖²_F + 2 tr(∂²_cE) of spec §2.2, evaluated in the cancellation-free form
    8·Σ_{i<j} ω_{c,k}²·sinh²(ln s_i − ln s_j) (k the axis orthogonal to i, j), ω_c = (2/‖q̃‖)·
    vec(q̂* ⊗ e_c).  Units: 1/(raw quaternion unit)².  Not floored (≥ 0 up to rounding).
    """
    return _rotation_beta(quats, _quat_norm(quats, dtype), _sinh2(log_scales, dtype), dtype)


def _rotation_terms(log_scales: Tensor, alpha_s: Tensor, eps_q: float,
                    cfg: TrustRegionConfig) -> tuple[Tensor, Tensor]:
    """(sinh2, nl): (N,3) :func:`_sinh2` and (N,) nl = −ln(max(1 − ε_q/α_s, 1e-20))."""
    return _sinh2(log_scales, cfg.compute_dtype), _neg_log_one_minus(eps_q / alpha_s)


def _rotation_radicand(quats: Tensor, norm: Tensor, sinh2: Tensor, nl: Tensor, cfg: TrustRegionConfig) -> Tensor:
    """(N,4) thr_c² = (8/β_c)·nl before the cap, β_c floored at 1e-20."""
    beta = _rotation_beta(quats, norm, sinh2, cfg.compute_dtype).clamp_min(_BETA_FLOOR)
    return 8.0 * torch.reciprocal(beta) * nl[:, None]


def _cap_rotation(thr: Tensor, norm: Tensor, cfg: TrustRegionConfig) -> Tensor:
    """min(thr_c, ‖q̃‖·quat_norm_cap) when the cap is enabled."""
    if cfg.quat_norm_cap is None:
        return thr
    return torch.minimum(thr, (norm * cfg.quat_norm_cap)[:, None])


def radius_rotation(log_scales: Tensor, quats: Tensor, opacity_logits: Tensor, eps: float,
                    cfg: TrustRegionConfig = TrustRegionConfig()) -> Tensor:
    """(N,4) radius of each raw quaternion coordinate (w, x, y, z), in raw quaternion units.

    thr_c = sqrt((8/β_c)·(−ln(max(1 − ε_q/α_s, 1e-20)))), β_c floored at 1e-20, then
    min(thr_c, ‖q̃‖·quat_norm_cap) when the cap is enabled.
    """
    sinh2, nl = _rotation_terms(log_scales, _alpha_s(opacity_logits, cfg), _budgets(eps, cfg)["rot"], cfg)
    norm = _quat_norm(quats, cfg.compute_dtype)
    thr = torch.sqrt(_rotation_radicand(quats, norm, sinh2, nl, cfg).contiguous())
    return _cap_rotation(thr, norm, cfg)


def _opacity_radius_of(alpha: Tensor, eps_op: float, cfg: TrustRegionConfig) -> tuple[Tensor, Tensor]:
    root = torch.sqrt(4.0 * alpha * eps_op)
    if cfg.mass_bounds == "linear":
        return root, root
    up = root + eps_op
    down = torch.where(alpha > eps_op, root - eps_op, alpha)
    return down, up


def radius_opacity(opacity_logits: Tensor, eps: float,
                   cfg: TrustRegionConfig = TrustRegionConfig()) -> tuple[Tensor, Tensor]:
    """(down, up), each (N,): how far the opacity α may decrease / increase (probability units).

    linear: both sqrt(4·α·ε_op) (real α, no mass clamp).  exact: the interval
    √α′ ∈ [√α − √ε_op, √α + √ε_op], i.e. H²/det S = (√α′ − √α)² ≤ ε_op.  Before the box.
    """
    return _opacity_radius_of(_alpha(opacity_logits, cfg), _budgets(eps, cfg)["op"], cfg)


def _opacity_interval(opacity_logits: Tensor, alpha: Tensor, eps_op: float,
                      cfg: TrustRegionConfig) -> tuple[Tensor, Tensor]:
    """(lo, hi), each (N,): the raw opacity-logit interval, box included."""
    one_minus = torch.sigmoid(-opacity_logits.to(cfg.compute_dtype))
    down, up = _opacity_radius_of(alpha, eps_op, cfg)
    blo, bhi = cfg.opacity_box
    if cfg.opacity_box_mode == "kernel":
        # kernel: clamp(clamp(α′, α−thr, α+thr), blo, bhi), in raw space (may not contain 0).
        t_hi = (alpha + up).clamp(blo, bhi)
        t_lo = (alpha - down).clamp(blo, bhi)
        return _logit_shift(alpha, one_minus, t_lo - alpha), _logit_shift(alpha, one_minus, t_hi - alpha)
    d_up = torch.minimum(up, bhi - alpha).clamp_min(0.0)
    d_dn = torch.minimum(down, alpha - blo).clamp_min(0.0)
    return _logit_shift(alpha, one_minus, -d_dn), _logit_shift(alpha, one_minus, d_up)


def _color_radius_of(sh_dc: Tensor, alpha_s: Tensor, eps_c: float,
                     cfg: TrustRegionConfig) -> tuple[Tensor, Tensor]:
    dt = cfg.compute_dtype
    color = cfg.sh_c0 * sh_dc.to(dt) + 0.5
    c_r = color.clamp_min(cfg.color_floor)
    e = (eps_c / alpha_s)[:, None, None]
    root = torch.sqrt(4.0 * c_r * e)
    if cfg.mass_bounds == "linear":
        down = up = root
    else:
        up = root + e
        down = torch.where(c_r > e, root - e, c_r)
    return down / cfg.sh_c0, up / cfg.sh_c0


def radius_color(sh_dc: Tensor, opacity_logits: Tensor, eps: float,
                 cfg: TrustRegionConfig = TrustRegionConfig()) -> tuple[Tensor, Tensor]:
    """(down, up), each (N,1,3): DC-coefficient radius per channel, before the [0, 1] box.

    C = sh_c0·dc + 0.5, C_r = max(C, color_floor), ẽ = ε_c/α_s.  linear: both
    sqrt(4·C_r·ẽ)/sh_c0; exact: √C′ ∈ √C_r ± √ẽ (H²/det S = α(√C′ − √C)² ≤ ε_c for C ≥ floor).
    """
    return _color_radius_of(sh_dc, _alpha_s(opacity_logits, cfg), _budgets(eps, cfg)["color"], cfg)


def _radius_table(params: Mapping[str, Tensor], eps: float, cfg: TrustRegionConfig,
                  names: Iterable[str], kernels=None) -> dict[str, tuple[Tensor, ...]]:
    """Stage 1 of the clip: the per-Gaussian radii of the requested parameter types.

    Entries (compute dtype): ``means`` (η,) (N,3); ``quats`` (thr,) (N,4), cap included;
    ``log_scales`` and ``opacity_logits`` (lo, hi) of the raw interval, each (N,) (the
    log-scale interval is the same for the three axes; the opacity box is included); ``color``
    (down, up) of the DC coefficient before the box, each (N,1,3) (for ``sh_dc`` and ``sh_rest``).
    Everything that needs exp/log/sigmoid/sqrt is here.  ``kernels``: the
    :mod:`trsplat.optim.hellinger_cpu` module computes the position/rotation radicands (CPU fast
    path, bit-identical), None: the torch expressions.
    """
    names = set(names)
    dt = cfg.compute_dtype
    b = _budgets(eps, cfg)
    alpha = _alpha(params["opacity_logits"], cfg)
    alpha_s = _alpha_s_of(alpha, cfg)
    table: dict[str, tuple[Tensor, ...]] = {}
    if "log_scales" in names:
        table["log_scales"] = _scale_interval(alpha_s, b["scale"], cfg)
    if "opacity_logits" in names:
        table["opacity_logits"] = _opacity_interval(params["opacity_logits"], alpha, b["op"], cfg)
    if names & {"sh_dc", "sh_rest"}:
        table["color"] = _color_radius_of(params["sh_dc"], alpha_s, b["color"], cfg)
    pos, rot = "means" in names, "quats" in names
    if pos or rot:
        # transcendental terms (torch) -> radicands (arithmetic: torch or numba) -> sqrt (torch)
        quats = params["quats"]
        norm = _quat_norm(quats, dt)
        e, nl_pos = _position_terms(params["log_scales"], alpha_s, b["pos"], cfg) if pos else (None, None)
        sinh2, nl_rot = _rotation_terms(params["log_scales"], alpha_s, b["rot"], cfg) if rot else (None, None)
        if kernels is None:
            rad_pos = _position_radicand(quats, norm, e, nl_pos, cfg) if pos else None
            rad_rot = _rotation_radicand(quats, norm, sinh2, nl_rot, cfg) if rot else None
        else:
            rad_pos, rad_rot = _radicands_cpu(kernels, quats, norm, e, nl_pos, sinh2, nl_rot, cfg)
        if pos:
            table["means"] = (torch.sqrt(rad_pos.contiguous()),)
        if rot:
            table["quats"] = (_cap_rotation(torch.sqrt(rad_rot.contiguous()), norm, cfg),)
    return table


# ----------------------------------------------------------------------------------------------
# raw-space intervals and clipping -- stage 2 (reference torch implementation)
# ----------------------------------------------------------------------------------------------
def _interval(name: str, params: Mapping[str, Tensor], table: Mapping[str, tuple[Tensor, ...]],
              cfg: TrustRegionConfig) -> tuple[Tensor, Tensor]:
    """Stage 2: the raw interval [lo, hi] of one parameter type, shaped like the parameter.

    From the radius table: colour boxes, the SH-rest radius and its box, then
    NaN → 0, −0 → +0 and (except opacity in ``opacity_box_mode="kernel"``) lo ≤ 0 ≤ hi.  The
    last one holds by construction (every radius is ≥ 0 or NaN); enforcing it makes it a
    guarantee both implementations rely on.  Only exactly rounded operations (+, −, ×, ÷,
    min/max, comparisons); :mod:`trsplat.optim.hellinger_cpu` repeats them in the same order.
    """
    if name in ("means", "quats"):
        (radius,) = table[name]
        lo, hi = -radius, radius
    elif name == "log_scales":
        lo, hi = (t[:, None].expand(-1, 3) for t in table[name])
    elif name == "opacity_logits":
        lo, hi = table[name]
    else:
        down_h, up_h = table["color"]
        if cfg.color_box:
            color = cfg.sh_c0 * params["sh_dc"].to(cfg.compute_dtype) + 0.5
            up = torch.minimum(up_h, ((1.0 - color) / cfg.sh_c0).clamp_min(0.0))
            down = torch.minimum(down_h, (color / cfg.sh_c0).clamp_min(0.0))
        else:
            up, down = up_h, down_h
        if name == "sh_dc":
            lo, hi = -down, up
        else:
            sh = params["sh_rest"].to(cfg.compute_dtype)
            base = torch.minimum(up, down) if cfg.rest_radius_from_box else torch.minimum(up_h, down_h)
            thr = (base / cfg.rest_ratio).expand_as(sh)
            if cfg.color_box:
                lo = -torch.minimum(thr, (sh + 0.5).clamp_min(0.0))
                hi = torch.minimum(thr, (0.5 - sh).clamp_min(0.0))
            else:
                lo, hi = -thr, thr
    lo, hi = _canonical(lo), _canonical(hi)
    if not (name == "opacity_logits" and cfg.opacity_box_mode == "kernel"):
        lo, hi = lo.clamp_max(0.0), hi.clamp_min(0.0)
    return lo, hi


def _check_request(params: Mapping[str, Tensor], eps: float, names: Iterable[str]) -> tuple[str, ...]:
    """Validate ε and the requested parameter types (known, with the params they depend on)."""
    _check_eps(eps)
    names = tuple(names)
    for name in names:
        if name not in RADIUS_INPUTS:
            raise KeyError(f"unknown Gaussian parameter {name!r}; expected one of {', '.join(_PARAM_NAMES)}")
        missing = [k for k in RADIUS_INPUTS[name] if k not in params]
        if missing:
            raise KeyError(f"clipping {name!r} needs params {', '.join(missing)}")
    return names


def step_bounds(params: Mapping[str, Tensor], eps: float, cfg: TrustRegionConfig = TrustRegionConfig(),
                names: Iterable[str] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
    """Raw-space step intervals ``{name: (lo, hi)}`` in ``cfg.compute_dtype``, shaped like the params.

    Radii, boxes and guards included.  Always lo ≤ 0 ≤ hi, except for opacity with
    ``opacity_box_mode="kernel"``.  Entries that cannot be computed (NaN) are 0 (and zeros are
    +0).  ``names`` selects the parameter types (default: all six); ``params`` must contain what
    they depend on.
    """
    names = _check_request(params, eps, _PARAM_NAMES if names is None else names)
    with torch.no_grad():
        table = _radius_table(params, eps, cfg, names)
        return {name: _interval(name, params, table, cfg) for name in names}


def clip_step(params: Mapping[str, Tensor], step: Mapping[str, Tensor], eps: float,
              cfg: TrustRegionConfig | None = None, *,
              backend: str | None = None) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Clip a proposed raw step to the Hellinger trust region, one coordinate at a time.

    Args:
        params: raw Gaussian tensors by name (see the module docstring); not modified.
        step: proposed raw steps for any subset of the parameter names, same shapes; not modified.
        eps: trust-region parameter ε ≥ 0 (ε = 0 freezes everything).
        cfg: options; default :class:`TrustRegionConfig`.
        backend: ``"torch"`` (vectorised reference, any device), ``"cpu"`` (numba kernels of
            :mod:`trsplat.optim.hellinger_cpu`; raises ``ValueError`` when not applicable, see
            :func:`cpu_unsupported_reason`) or ``"auto"`` (``"cpu"`` where applicable, else
            ``"torch"``).  ``None``: the module default :data:`clip_backend` (``"auto"``).  Both
            give bit-identical results.

    Returns:
        ``(clipped, on_bound)``: new tensors with the keys of ``step``.  ``clipped[name]`` has the
        step's dtype; entries inside their interval are returned bit-for-bit, others are the
        interval end (rounded inwards, i.e. towards zero, in the step's dtype; a zero end is +0);
        NaN entries are +0.  ``on_bound[name]`` is a bool mask of the entries that were reduced
        by the trust region or a box.
    """
    cfg = TrustRegionConfig() if cfg is None else cfg
    backend = clip_backend if backend is None else backend
    if backend not in CLIP_BACKENDS:
        raise ValueError(f"unknown clip backend {backend!r}; choose one of {', '.join(CLIP_BACKENDS)}")
    names = _check_request(params, eps, step.keys())
    if backend != "torch":
        reason = cpu_unsupported_reason(params, step, cfg)
        if reason is None:
            return _clip_cpu(params, step, eps, cfg, names)
        if backend == "cpu":
            raise ValueError(f"clip backend 'cpu' cannot clip this step: {reason}")
    return _clip_torch(params, step, eps, cfg, names)


def _clip_torch(params: Mapping[str, Tensor], step: Mapping[str, Tensor], eps: float,
                cfg: TrustRegionConfig, names: tuple[str, ...]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The reference implementation of :func:`clip_step` (vectorised torch, any device)."""
    clipped: dict[str, Tensor] = {}
    on_bound: dict[str, Tensor] = {}
    with torch.no_grad():
        table = _radius_table(params, eps, cfg, names)
        for name, st in step.items():
            lo, hi = _interval(name, params, table, cfg)
            _check_step(name, st, tuple(lo.shape))
            lo_t, hi_t = _round_inward(lo, hi, st.dtype)
            below, above = st < lo_t, st > hi_t          # both False for NaN
            out = torch.where(below, lo_t, torch.where(above, hi_t, st))
            hit = below | above
            if name == "opacity_logits" and cfg.opacity_box_mode == "kernel":
                zero = st == 0
                out = torch.where(zero, st, out)
                hit = hit & ~zero
            clipped[name] = torch.where(torch.isnan(st), torch.zeros_like(st), out)
            on_bound[name] = hit
    return clipped, on_bound


def _check_step(name: str, st: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(st.shape) != shape:
        raise ValueError(f"step {name!r} has shape {tuple(st.shape)}, params imply {shape}")
    if not st.dtype.is_floating_point:
        raise ValueError(f"step {name!r} must be a floating-point tensor, got {st.dtype}")


# ----------------------------------------------------------------------------------------------
# CPU fast path (numba kernels of trsplat.optim.hellinger_cpu)
# ----------------------------------------------------------------------------------------------
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
    """Why the ``"cpu"`` backend of :func:`clip_step` cannot clip ``step``, or None if it can.

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


def _clip_cpu(params: Mapping[str, Tensor], step: Mapping[str, Tensor], eps: float,
              cfg: TrustRegionConfig, names: tuple[str, ...]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """:func:`clip_step` with the arithmetic in the numba kernels of :mod:`trsplat.optim.hellinger_cpu`."""
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
        table = _radius_table(params, eps, cfg, names, kernels=kernels) if n else {}
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
    """:func:`_position_radicand` and :func:`_rotation_radicand` (either may be skipped by passing
    None terms) in one numba pass, bit-identical."""
    n, dt = norm.shape[0], cfg.compute_dtype
    rad_pos = torch.empty((n if e is not None else 0, 3), dtype=dt)
    rad_rot = torch.empty((n if sinh2 is not None else 0, 4), dtype=dt)
    none3, none1 = torch.empty((0, 3), dtype=dt), torch.empty(0, dtype=dt)
    kernels.radicands(_np(quats), _np(norm), _np(none3 if e is None else e), _np(none1 if nl_pos is None else nl_pos),
                      _np(none3 if sinh2 is None else sinh2), _np(none1 if nl_rot is None else nl_rot),
                      cfg.bounds == "kernel", rad_pos.numpy(), rad_rot.numpy())
    return (rad_pos if e is not None else None), (rad_rot if sinh2 is not None else None)


# ----------------------------------------------------------------------------------------------
# closed-form squared Hellinger distance
# ----------------------------------------------------------------------------------------------
def hellinger_sq(mu1: Tensor, cov1: Tensor, mass1: Tensor, mu2: Tensor, cov2: Tensor, mass2: Tensor) -> Tensor:
    """Squared Hellinger distance of eq. (6), full convention, between Z·N(µ, Σ) and Z′·N(µ′, Σ′).

    H² = Z + Z′ − 2·sqrt(Z Z′)·BC with the Bhattacharyya coefficient
    BC = det(Σ)^¼ det(Σ′)^¼ / det(Σ̄)^½ · exp(−Δµᵀ Σ̄⁻¹ Δµ / 8), Σ̄ = (Σ + Σ′)/2, evaluated as
    (√Z − √Z′)² + 2√(ZZ′)(1 − BC) without cancellation.  Shapes: µ (...,3), Σ (...,3,3) SPD,
    Z (...) ≥ 0; returns (...).  With Z = α·det S this is ∫(√G − √G′)²dz/(2π)^{3/2} for
    G = α·exp(−½(z−µ)ᵀΣ⁻¹(z−µ)).
    """
    cov_bar = 0.5 * (cov1 + cov2)
    chol_bar = torch.linalg.cholesky(cov_bar)
    diff = (mu1 - mu2).unsqueeze(-1)
    sol = torch.cholesky_solve(diff, chol_bar)
    maha = (diff * sol).sum(dim=(-2, -1))

    def logdet(chol: Tensor) -> Tensor:
        return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)

    log_bc = (0.25 * logdet(torch.linalg.cholesky(cov1)) + 0.25 * logdet(torch.linalg.cholesky(cov2))
              - 0.5 * logdet(chol_bar) - maha / 8.0)
    return (torch.sqrt(mass1) - torch.sqrt(mass2)) ** 2 - 2.0 * torch.sqrt(mass1 * mass2) * torch.expm1(log_bc)


def gaussian_moments(params: Mapping[str, Tensor], dtype: torch.dtype = torch.float64,
                     sh_c0: float = SH_C0) -> dict[str, Tensor]:
    """Physical quantities of raw Gaussians in ``dtype``.

    Returns ``mu`` (N,3), ``cov`` (N,3,3) = R diag(s²) Rᵀ, ``det_s`` (N,) = Π s, ``alpha`` (N,)
    and ``color`` (N,3) = sh_c0·dc + 0.5 (when ``sh_dc`` is present).
    """
    ls = params["log_scales"].to(dtype)
    rot = _rotation_matrix(_unit_quats(params["quats"], dtype)[0])
    cov = rot @ torch.diag_embed(torch.exp(2.0 * ls)) @ rot.transpose(-1, -2)
    out = {"mu": params["means"].to(dtype), "cov": cov, "det_s": torch.exp(ls.sum(-1)),
           "alpha": torch.sigmoid(params["opacity_logits"].to(dtype))}
    if "sh_dc" in params:
        out["color"] = sh_c0 * params["sh_dc"].to(dtype).reshape(-1, 3) + 0.5
    return out


def normalized_hellinger_sq(params: Mapping[str, Tensor], new_params: Mapping[str, Tensor],
                            color: bool = False, dtype: torch.dtype = torch.float64) -> Tensor:
    """H²(G, G′)/det S(G) between raw Gaussians ``params`` and ``new_params`` (full convention).

    ``color=False``: mass Z = α·det S, returns (N,).  ``color=True``: per-channel mass
    Z = α·max(C, 0)·det S, returns (N,3).  Used to validate the trust region (rebuttal exp5).
    """
    a, b = gaussian_moments(params, dtype), gaussian_moments(new_params, dtype)
    za, zb = a["alpha"] * a["det_s"], b["alpha"] * b["det_s"]
    if color:
        za = za[:, None] * a["color"].clamp_min(0.0)
        zb = zb[:, None] * b["color"].clamp_min(0.0)
        h2 = hellinger_sq(a["mu"][:, None], a["cov"][:, None], za, b["mu"][:, None], b["cov"][:, None], zb)
        return h2 / a["det_s"][:, None]
    return hellinger_sq(a["mu"], a["cov"], za, b["mu"], b["cov"], zb) / a["det_s"]
