"""Hellinger trust region of 3DGS²-TR: per-coordinate radii and step clipping in raw space.

Vectorised over the N Gaussians; works on the raw 3DGS parameters ``means`` (N,3), ``log_scales``
(N,3), ``quats`` (N,4) unnormalised (w,x,y,z), ``opacity_logits`` (N,), ``sh_dc`` (N,1,3) and
``sh_rest`` (N,K,3).  The geometry, the radii, each option of :class:`TrustRegionConfig` and the
two bit-identical implementations of :func:`clip_step` are explained in ``docs/trust_region.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Mapping

import torch
from torch import Tensor

SH_C0 = 0.28209479177387814
"""The SH degree-0 constant Y₀₀ = 1/(2√π) of the renderer (``trsplat.gaussians.SH_C0``)."""

KERNEL_SH_C0 = 0.282
"""The truncated SH degree-0 constant hard-coded in the authors' trust-region kernel."""

CLIP_BACKENDS = ("auto", "torch", "cpu")
"""Implementations of :func:`clip_step` (``docs/trust_region.md``, "Implementations")."""

_LN_FLOOR = 1e-20
_BETA_FLOOR = 1e-20
PARAM_NAMES = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
"""The raw Gaussian tensors the trust region knows, in the order of ``trsplat.gaussians.PARAM_NAMES``."""
# Which raw tensors each parameter type's radius depends on.
RADIUS_INPUTS: dict[str, tuple[str, ...]] = {
    "means": ("log_scales", "quats", "opacity_logits"),
    "log_scales": ("opacity_logits",),
    "quats": ("log_scales", "quats", "opacity_logits"),
    "opacity_logits": ("opacity_logits",),
    "sh_dc": ("sh_dc", "opacity_logits"),
    "sh_rest": ("sh_dc", "sh_rest", "opacity_logits"),
}

# (quats, norm, e, nl_pos, sinh2, nl_rot, cfg) -> (position radicand or None, rotation radicand or None)
Radicands = Callable[..., tuple[Tensor | None, Tensor | None]]


@dataclass(frozen=True)
class TrustRegionConfig:
    """Options of the Hellinger trust region (each decision: ``docs/trust_region.md``).

    Attributes:
        bounds: ``"kernel"`` (authors' CUDA kernel constants, default) or ``"paper"`` (the
            constants as printed in the paper).
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
        training (``docs/trust_region.md``, decision 5)."""
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
# order (docs/trust_region.md, "Implementations").
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

    Equal to the paper's 2‖S ∂_cE S⁻¹‖²_F + 2 tr(∂²_cE) (``docs/trust_region.md``), evaluated in
    the cancellation-free form
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
                  names: Iterable[str], radicands: Radicands | None = None) -> dict[str, tuple[Tensor, ...]]:
    """Stage 1 of the clip: the per-Gaussian radii of the requested parameter types.

    Entries (compute dtype): ``means`` (η,) (N,3); ``quats`` (thr,) (N,4), cap included;
    ``log_scales`` and ``opacity_logits`` (lo, hi) of the raw interval, each (N,) (the
    log-scale interval is the same for the three axes; the opacity box is included); ``color``
    (down, up) of the DC coefficient before the box, each (N,1,3) (for ``sh_dc`` and ``sh_rest``).
    Everything that needs exp/log/sigmoid/sqrt is here.  ``radicands`` computes the position and
    rotation radicands (the CPU fast path passes its numba version, bit-identical); None: the
    torch expressions :func:`_position_radicand` and :func:`_rotation_radicand`.
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
        if radicands is None:
            rad_pos = _position_radicand(quats, norm, e, nl_pos, cfg) if pos else None
            rad_rot = _rotation_radicand(quats, norm, sinh2, nl_rot, cfg) if rot else None
        else:
            rad_pos, rad_rot = radicands(quats, norm, e, nl_pos, sinh2, nl_rot, cfg)
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
            raise KeyError(f"unknown Gaussian parameter {name!r}; expected one of {', '.join(PARAM_NAMES)}")
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
    names = _check_request(params, eps, PARAM_NAMES if names is None else names)
    with torch.no_grad():
        table = _radius_table(params, eps, cfg, names)
        return {name: _interval(name, params, table, cfg) for name in names}


def clip_step(params: Mapping[str, Tensor], step: Mapping[str, Tensor], eps: float,
              cfg: TrustRegionConfig | None = None, *,
              backend: str = "auto") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Clip a proposed raw step to the Hellinger trust region, one coordinate at a time.

    Args:
        params: raw Gaussian tensors by name (module docstring); not modified.
        step: proposed raw steps for any subset of the parameter names, same shapes; not modified.
        eps: trust-region parameter ε ≥ 0 (ε = 0 freezes everything).
        cfg: options; default :class:`TrustRegionConfig`.
        backend: ``"torch"`` (vectorised reference, any device), ``"cpu"`` (numba kernels of
            :mod:`trsplat.optim.hellinger_cpu`; raises ``ValueError`` when not applicable, see
            :func:`trsplat.optim.cpu_clip.cpu_unsupported_reason`) or ``"auto"`` (the default:
            ``"cpu"`` where applicable, else ``"torch"``).  Both give bit-identical results.

    Returns:
        ``(clipped, on_bound)``: new tensors with the keys of ``step``.  ``clipped[name]`` has the
        step's dtype; entries inside their interval are returned bit-for-bit, others are the
        interval end (rounded inwards, i.e. towards zero, in the step's dtype; a zero end is +0);
        NaN entries are +0.  ``on_bound[name]`` is a bool mask of the entries that were reduced
        by the trust region or a box.
    """
    cfg = TrustRegionConfig() if cfg is None else cfg
    check_backend(backend)
    names = _check_request(params, eps, step.keys())
    if backend != "torch":
        from trsplat.optim.cpu_clip import clip_cpu, cpu_unsupported_reason  # (it imports this module)

        reason = cpu_unsupported_reason(params, step, cfg)
        if reason is None:
            return clip_cpu(params, step, eps, cfg, names)
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


def check_backend(backend: str) -> None:
    """Raise ``ValueError`` unless ``backend`` is one of :data:`CLIP_BACKENDS`."""
    if backend not in CLIP_BACKENDS:
        raise ValueError(f"unknown clip backend {backend!r}; choose one of {', '.join(CLIP_BACKENDS)}")


def _check_step(name: str, st: Tensor, shape: tuple[int, ...]) -> None:
    if tuple(st.shape) != shape:
        raise ValueError(f"step {name!r} has shape {tuple(st.shape)}, params imply {shape}")
    if not st.dtype.is_floating_point:
        raise ValueError(f"step {name!r} must be a floating-point tensor, got {st.dtype}")


