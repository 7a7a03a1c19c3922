"""Training configuration: one dataclass, with 3DGS and 3DGS²-TR paper defaults.

Every field is a command-line option of ``trsplat train`` (underscores become dashes) and is
saved in ``DIR/config.json`` and in ``metrics.json`` so a run can be resumed and reproduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from trsplat.errors import TrsplatError

OPTIMIZERS = ("adam", "adam-tr", "tr")


@dataclass
class TrainConfig:
    """All knobs of one training run.

    Departures from 3DGS are marked "departure" and documented in ``docs/training.md``.
    """

    data: str = ""
    out: str = ""
    optimizer: str = "adam"
    iters: int = 30_000
    eval_at: list[int] = field(default_factory=lambda: [7000, 15000, 30000])
    downscale: float = 1.0
    backend: str = "auto"
    seed: int = 0
    background: str = "auto"           # auto: white for Blender/ngp captures, black for COLMAP (3DGS)
    # initialisation
    init: str = "auto"                 # auto | sfm | random
    n_random_init: int = 100_000       # 3DGS: 100k random points for Blender scenes
    init_box: float | None = None      # half-width of the random-init cube; None: from the cameras
    # evaluation
    llffhold: int = 8
    max_test_views: int | None = None  # evenly spaced subset of the test views (None: all)
    lpips: bool = True
    n_saved_renders: int = 4
    # loss
    lambda_dssim: float = 0.2
    # SH ramp-up: degree +1 every sh_interval iterations, up to sh_degree (3DGS: 1000, 3)
    sh_degree: int = 3
    sh_interval: int = 1000
    # Adam (3DGS recipe); the position lr is multiplied by the scene extent
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_means_max_steps: int | None = 30_000  # 3DGS; None decays over the run length instead
    lr_sh_dc: float = 2.5e-3
    lr_sh_rest: float = 2.5e-3 / 20
    lr_opacity: float = 0.025
    lr_scale: float = 5e-3
    lr_rotation: float = 1e-3
    adam_eps: float = 1e-15
    # 3DGS²-TR and ADAM-TR (spec §1.2, §1.5, §6); paper defaults
    eps_start: float = 1e-6            # trust-region ε at the first iteration (rebuttal: 1e-5)
    eps_end: float = 1e-8              # ε at the last iteration (rebuttal: 1e-7)
    curvature: str = "hutchinson"      # hutchinson | gnb | none
    curvature_interval: int = 10       # l: refresh D̂ every l iterations
    curvature_views: int = 1           # |S₂|: views per curvature refresh
    n_probes: int = 1                  # ν: probes per view
    grad_views: int = 1                # |S₁|: views per gradient (all optimisers)
    theta1: float = 0.9                # gradient EMA
    theta2: float = 0.999              # curvature EMA
    guard: str = "sophia"              # sophia | abs | raw: handling of D̂ <= 0 (spec §1.5)
    guard_floor: float = 1e-12         # floor of D̂ for the sophia/abs guards
    bias_correction: bool = False      # Adam-style bias correction of both EMAs (paper: off)
    step_norm: str = "none"            # none (paper) | median-radius: rescale each tensor's Newton steps
                                       # so their median |Δ|/radius is 1 before the clip (not in the paper)
    step_norm_quantile: float = 0.5    # median-radius pivot: this quantile of |Δ|/radius is set to 1
    residual_form: str = "sqrt"        # sqrt (paper) | l2 (surrogate), spec §1.4
    residual_delta: float = 1e-6       # δ of the sqrt residual, per-pixel loss units
    # Hellinger trust region (trsplat.optim.hellinger.TrustRegionConfig; spec §2.4, §2.7)
    tr_bounds: str = "kernel"          # kernel (authors' CUDA kernel) | paper (constants as printed)
    tr_split_budget: bool = True       # kernel's ε/3 and ε/4 split
    tr_opacity_eps_scale: float = 1.0  # ε_op = scale · ε
    tr_mass_clamp: str = "0.01,1.0"    # "lo,hi" clamp of α in the radii, or "none"
    tr_quat_norm_cap: float | None = 0.1   # quaternion steps ≤ cap·‖q̃‖; None disables
    tr_rest_ratio: float = 20.0        # SH-rest radius = DC radius / ratio
    tr_color_box: bool = True          # DC colour in [0, 1], SH rest in [-0.5, 0.5]
    tr_color_floor: float = 1.0 / 255.0    # colour radius from max(C, floor); 0 = kernel (frozen)
    tr_rest_radius_from_box: bool = False  # True = kernel (rest radius from the boxed DC interval)
    tr_mass_bounds: str = "linear"     # linear (kernel) | exact Hellinger intervals for opacity/colour
    tr_opacity_box_mode: str = "shrink"    # shrink (never reverses a step) | kernel
    tr_scale_min_ratio: float | None = 0.5  # new scale >= ratio·s; None = kernel (may collapse)
    # checkpoints
    checkpoint_every: int = 1000

    def validate(self) -> None:
        """Raise :class:`TrsplatError` for impossible option combinations."""
        if self.optimizer not in OPTIMIZERS:
            raise TrsplatError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.iters < 1:
            raise TrsplatError(f"--iters must be >= 1, got {self.iters}")
        if self.downscale < 1:
            raise TrsplatError(f"--downscale must be >= 1, got {self.downscale}")
        bad = [i for i in self.eval_at if i < 1 or i > self.iters]
        if bad:
            raise TrsplatError(f"--eval-at {bad} outside 1..--iters ({self.iters})")
        if not 0 <= self.lambda_dssim <= 1:
            raise TrsplatError(f"--lambda-dssim must be in [0, 1], got {self.lambda_dssim}")
        if not 0 <= self.sh_degree <= 3:
            raise TrsplatError(f"--sh-degree must be 0..3, got {self.sh_degree}")
        if self.n_random_init < 1:
            raise TrsplatError(f"--n-random-init must be >= 1, got {self.n_random_init}")
        if self.background not in ("auto", "white", "black"):
            raise TrsplatError(f"--background {self.background!r}: choose auto, white or black")
        if self.init not in ("auto", "sfm", "random"):
            raise TrsplatError(f"--init {self.init!r}: choose auto, sfm or random")
        if self.eps_start <= 0 or self.eps_end <= 0:
            raise TrsplatError(f"--eps-start/--eps-end must be > 0, got {self.eps_start}, {self.eps_end}")
        if self.curvature not in ("hutchinson", "gnb", "none"):
            raise TrsplatError(f"--curvature {self.curvature!r}: choose hutchinson, gnb or none")
        if self.guard not in ("sophia", "abs", "raw"):
            raise TrsplatError(f"--guard {self.guard!r}: choose sophia, abs or raw")
        if self.step_norm not in ("none", "median-radius"):
            raise TrsplatError(f"--step-norm {self.step_norm!r}: choose none or median-radius")
        if not 0.0 < self.step_norm_quantile <= 1.0:
            raise TrsplatError(f"--step-norm-quantile must lie in (0, 1], got {self.step_norm_quantile}")
        if self.residual_form not in ("sqrt", "l2"):
            raise TrsplatError(f"--residual-form {self.residual_form!r}: choose sqrt or l2")
        for name in ("curvature_interval", "curvature_views", "n_probes", "grad_views"):
            if getattr(self, name) < 1:
                raise TrsplatError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("theta1", "theta2"):
            if not 0 <= getattr(self, name) < 1:
                raise TrsplatError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        if self.residual_delta < 0 or (self.residual_form == "sqrt" and self.residual_delta == 0):
            raise TrsplatError(f"--residual-delta must be > 0 for the sqrt residual, got {self.residual_delta}")
        if self.checkpoint_every < 1:
            raise TrsplatError(f"--checkpoint-every must be >= 1, got {self.checkpoint_every}")
        self.trust_region()

    def trust_region(self):
        """The :class:`~trsplat.optim.hellinger.TrustRegionConfig` of the ``tr_*`` options."""
        from trsplat.optim.hellinger import TrustRegionConfig

        clamp = None
        if self.tr_mass_clamp.strip().lower() != "none":
            try:
                lo, hi = (float(x) for x in self.tr_mass_clamp.split(","))
            except ValueError:
                raise TrsplatError(f"--tr-mass-clamp {self.tr_mass_clamp!r}: expected 'lo,hi' or 'none'") from None
            clamp = (lo, hi)
        try:
            return TrustRegionConfig(
                bounds=self.tr_bounds, split_budget=self.tr_split_budget,
                opacity_eps_scale=self.tr_opacity_eps_scale, mass_clamp=clamp,
                quat_norm_cap=self.tr_quat_norm_cap, rest_ratio=self.tr_rest_ratio,
                color_box=self.tr_color_box, color_floor=self.tr_color_floor,
                rest_radius_from_box=self.tr_rest_radius_from_box, mass_bounds=self.tr_mass_bounds,
                opacity_box_mode=self.tr_opacity_box_mode, scale_min_ratio=self.tr_scale_min_ratio,
            )
        except ValueError as exc:
            raise TrsplatError(f"trust-region options (--tr-*): {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrsplatError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**data)
