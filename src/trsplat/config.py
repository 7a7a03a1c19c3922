"""Training configuration: nested dataclasses with 3DGS and 3DGS²-TR paper defaults.

``TrainConfig`` holds the run-level knobs and one sub-config per concern (``scene``, ``eval``,
``optim``, ``strategy``). Every leaf field is a command-line option of ``trsplat train``
(underscores become dashes; leaf names are unique across sub-configs) and carries its help text,
allowed values and range in the field's metadata: the CLI and :meth:`TrainConfig.validate` both
read them there, so the allowed values are written once. ``DIR/config.json`` holds
:meth:`TrainConfig.to_dict` (nested); flat configs of earlier versions still load.
Departures from 3DGS are documented in ``docs/training.md``.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from typing import Any, Iterator

from trsplat.errors import TrsplatError, warn
from trsplat.render.backends import BACKENDS, get_backend
from trsplat.strategy.build import STRATEGIES
from trsplat.strategy.ops import STATE_POLICIES

OPTIMIZERS = ("adam", "adam-tr", "tr")
ADAM_IMPLS = ("fused", "single-tensor")
CURVATURES = ("hutchinson", "gnb", "none")
DENSIFY = STRATEGIES


def opt(default: Any, help: str = "", *, choices: tuple[str, ...] | None = None, lo: float | None = None,
        hi: float | None = None, lo_open: bool = False, hi_open: bool = False) -> Any:
    """A config field: ``default`` plus help text, allowed ``choices`` and range [lo, hi] (or open)."""
    meta = {"help": help, "choices": choices, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class SceneConfig:
    """What is loaded and how the Gaussians start."""

    data: str = opt("", "capture folder")
    downscale: float = opt(1.0, "resize images by 1/K once, on load", lo=1)
    background: str = opt("auto", "auto (white for Blender/ngp, black for COLMAP), white or black",
                          choices=("auto", "white", "black"))
    init: str = opt("auto", "auto (SfM points when present, else random), sfm or random",
                    choices=("auto", "sfm", "random"))
    n_random_init: int = opt(100_000, "number of random initial points (3DGS: 100k for Blender scenes)", lo=1)
    init_box: float | None = opt(None, "half-width of the random-init cube in world units "
                                       "(default: from the cameras, see docs)")
    llffhold: int = opt(8, "every K-th image is a test view when the dataset has no test split", lo=2)
    max_test_views: int | None = opt(None, "evaluate an evenly spaced subset of this many test views", lo=1)


@dataclass
class EvalConfig:
    """When and how test metrics are computed."""

    eval_at: list[int] | None = opt(None, "comma-separated iterations at which to evaluate all test views (the "
                                    "last iteration is always evaluated; default: those of 7000, 15000 and 30000 "
                                    "within --iters, half of --iters and --iters)")
    lpips: bool = opt(True, "compute LPIPS at evaluation (slower on CPU)")
    n_saved_renders: int = opt(4, "test renders written next to their ground truth at each evaluation", lo=0)


@dataclass
class OptimizerConfig:
    """Adam (3DGS recipe), ADAM-TR and 3DGS²-TR, with the Hellinger trust region's ``tr_*`` options."""

    optimizer: str = opt("adam", "optimiser", choices=OPTIMIZERS)
    # Adam (3DGS recipe); the position lr is multiplied by the scene extent
    lr_means: float = opt(1.6e-4, "position learning rate at the start (times the scene extent)", lo=0, lo_open=True)
    lr_means_final: float = opt(1.6e-6, "position learning rate at the end of its decay", lo=0, lo_open=True)
    lr_means_max_steps: int | None = opt(30_000, "steps of the position-lr decay, as 3DGS "
                                                 "(none: decay over the run length)", lo=1)
    lr_sh_dc: float = opt(2.5e-3, "learning rate of the SH DC coefficients", lo=0, lo_open=True)
    lr_sh_rest: float = opt(2.5e-3 / 20, "learning rate of the higher SH coefficients", lo=0, lo_open=True)
    lr_opacity: float = opt(0.025, "learning rate of the opacity logits", lo=0, lo_open=True)
    lr_scale: float = opt(5e-3, "learning rate of the log-scales", lo=0, lo_open=True)
    lr_rotation: float = opt(1e-3, "learning rate of the quaternions", lo=0, lo_open=True)
    adam_eps: float = opt(1e-15, "Adam epsilon", lo=0, lo_open=True)
    adam_beta1: float = opt(0.9, "Adam first-moment decay", lo=0, hi=1, hi_open=True)
    adam_beta2: float = opt(0.999, "Adam second-moment decay", lo=0, hi=1, hi_open=True)
    adam_impl: str = opt("fused", "Adam's torch implementation: fused (one vectorised kernel over each tensor) or "
                         "single-tensor (torch's per-op loop, the implementation before fused; the two differ by "
                         "float rounding, docs/cpu_performance.md)", choices=ADAM_IMPLS)
    # 3DGS²-TR and ADAM-TR (docs/optimizer.md); paper defaults
    eps_start: float = opt(1e-6, "trust-region epsilon at the first iteration (rebuttal: 1e-5)", lo=0, lo_open=True)
    eps_end: float = opt(1e-8, "trust-region epsilon at the last iteration (rebuttal: 1e-7)", lo=0, lo_open=True)
    curvature: str = opt("hutchinson", "tr: curvature estimator", choices=CURVATURES)
    curvature_interval: int = opt(10, "tr: refresh the curvature every l iterations", lo=1)
    curvature_views: int = opt(1, "tr: views per curvature refresh (|S2|)", lo=1)
    n_probes: int = opt(1, "tr: probes per view (nu)", lo=1)
    theta1: float = opt(0.9, "tr: gradient EMA factor", lo=0, hi=1, hi_open=True)
    theta2: float = opt(0.999, "tr: curvature EMA factor", lo=0, hi=1, hi_open=True)
    guard: str = opt("sophia", "tr: handling of curvature <= 0 (docs/optimizer.md)", choices=("sophia", "abs", "raw"))
    guard_floor: float = opt(1e-12, "tr: floor of the curvature for the sophia/abs guards", lo=0, lo_open=True)
    bias_correction: bool = opt(False, "tr: Adam-style bias correction of both EMAs (paper: off)")
    step_norm: str = opt("none", "tr only: none (the paper) or median-radius (scale each tensor's Newton steps so "
                         "their median |step|/radius is 1 before the clip, so the curvature, not only the bound, "
                         "sets step sizes)", choices=("none", "median-radius"))
    step_norm_quantile: float = opt(0.5, "tr with --step-norm median-radius: the quantile of |step|/radius set to 1 "
                                    "(0.5, the median; smaller values clip more coordinates, 0 would be the paper's "
                                    "sign steps)", lo=0, hi=1, lo_open=True)
    tr_opacity_step: str = opt("newton", "tr: newton (the paper: the opacity logits take the clipped Newton step) "
                               "or adam (they take Adam's step at --lr-opacity with theta1/theta2 as betas, "
                               "outside the trust region; docs/densification.md)", choices=("newton", "adam"))
    tr_step: str = opt("newton", "tr: newton (the paper: the guarded Newton step -g/D, clipped; with --curvature none "
                       "every moving coordinate goes to the bound) or adam (needs --curvature none: Adam's normalised "
                       "step m/(sqrt(v)+eps), at most 1 per coordinate, times the bound in its direction, so a noisy "
                       "gradient gives a shorter step; docs/optimizer.md)", choices=("newton", "adam"))
    residual_form: str = opt("sqrt", "tr: residual of the curvature estimate: sqrt (paper) or l2 (surrogate)",
                             choices=("sqrt", "l2"))
    residual_delta: float = opt(1e-6, "tr: delta of the sqrt residual, per-pixel loss units", lo=0)
    tr_radius: str = opt("fixed", "tr: fixed (the paper: radii for the scheduled eps) or adaptive (eps times a "
                         "factor that a trust-region ratio test of the step's loss grows or shrinks; "
                         "docs/optimizer.md)", choices=("fixed", "adaptive"))
    tr_radius_test_every: int = opt(10, "tr with --tr-radius adaptive: run the ratio test (one extra forward "
                                    "render) every k iterations", lo=1)
    tr_radius_test: str = opt("step", "tr with --tr-radius adaptive: where the ratio test measures the actual "
                              "decrease: step (the step's own views; model from the step's gradient) or held-out "
                              "(--tr-radius-test-views other training views drawn by the optimizer, two forward "
                              "renders each; model from the gradient EMA) or next-slope (no render: the next "
                              "step's gradient along the step, shrink on overshoot); docs/optimizer.md",
                              choices=("step", "held-out", "next-slope"))
    tr_radius_test_views: int = opt(1, "tr with --tr-radius-test held-out: training views per ratio test", lo=1)
    tr_radius_scale_max: float = opt(1024.0, "tr with --tr-radius adaptive: the factor kappa on eps stays in "
                                     "[1/max, max]", lo=1)
    tr_radius_scale_min: float | None = opt(None, "tr with --tr-radius adaptive: the lower bound of kappa, in "
                                            "(0, 1] (none: 1/--tr-radius-scale-max)", lo=0, hi=1, lo_open=True)
    tr_radius_opacity_max: float | None = opt(None, "tr with --tr-radius adaptive: the opacity radius uses "
                                              "min(kappa, this) instead of kappa (none: kappa)", lo=0, lo_open=True)
    tr_damping: str = opt("none", "tr with --tr-radius adaptive and a curvature: none or lm (Levenberg-Marquardt: "
                          "divide by max(D,0) + mu*mean(max(D,0)) per tensor, mu doubled when the ratio test "
                          "shrinks kappa, halved when the model held; docs/optimizer.md)", choices=("none", "lm"))
    # Hellinger trust region (trsplat.optim.hellinger.TrustRegionConfig; docs/trust_region.md)
    tr_bounds: str = opt("kernel", "kernel (authors' CUDA kernel) or paper (constants as printed)",
                         choices=("kernel", "paper"))
    tr_split_budget: bool = opt(True, "kernel's eps/3 and eps/4 split of the budget")
    tr_opacity_eps_scale: float = opt(1.0, "opacity budget = scale * eps")
    tr_mass_clamp: str = opt("0.01,1.0", "'lo,hi' clamp of alpha in the radii, or 'none'")
    tr_quat_norm_cap: float | None = opt(0.1, "quaternion steps <= cap * |q|; none disables")
    tr_rest_ratio: float = opt(20.0, "SH-rest radius = DC radius / ratio")
    tr_color_box: bool = opt(True, "DC colour in [0, 1], SH rest in [-0.5, 0.5]")
    tr_color_floor: float = opt(1.0 / 255.0, "colour radius from max(C, floor); 0 = kernel (frozen)")
    tr_rest_radius_from_box: bool = opt(False, "True = kernel (rest radius from the boxed DC interval)")
    tr_mass_bounds: str = opt("linear", "linear (kernel) or exact Hellinger intervals for opacity/colour",
                              choices=("linear", "exact"))
    tr_opacity_box_mode: str = opt("shrink", "shrink (never reverses a step) or kernel",
                                   choices=("shrink", "kernel"))
    tr_scale_min_ratio: float | None = opt(0.5, "new scale >= ratio * s; none = kernel (may collapse)")

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


@dataclass
class StrategyConfig:
    """Densification: which strategy adds, removes or moves Gaussians during training
    (``docs/densification.md``). Iteration options are written for a 30k-iteration run and
    multiplied by ``densify_steps_scale``."""

    densify: str = opt("none", "densification strategy (none: the paper's protocol; adc: 3DGS's adaptive "
                       "density control; mcmc: 3DGS-MCMC)", choices=DENSIFY)
    densify_steps_scale: float | None = opt(None, "factor on every densification iteration option "
                                            "(none: min(1, iters/30000))", lo=0, lo_open=True)
    densify_start: int | None = opt(None, "refine after this iteration (none: 500)", lo=0)
    densify_stop: int | None = opt(None, "refine before this iteration (none: adc 15000, mcmc 25000)", lo=0)
    densify_every: int = opt(100, "refine every this many iterations", lo=1)
    densify_state: str = opt("zero", "optimiser state of new and moved Gaussians: zero, inherit (the source's) "
                             "or inherit-curvature (the source's second moment / curvature EMA only)",
                             choices=STATE_POLICIES)
    densify_grad_threshold: float = opt(2e-4, "adc: clone/split above this mean view-space gradient norm "
                                        "(NDC units, as 3DGS)", lo=0)
    percent_dense: float = opt(0.01, "adc: clone below, split above this largest scale (x the scene extent)", lo=0)
    opacity_reset_every: int = opt(3000, "adc: clamp opacities to 0.01 every this many iterations", lo=1)
    prune_opacity: float = opt(0.005, "adc: prune below this opacity; mcmc: relocate at or below it", lo=0, hi=1)
    prune_scale: float = opt(0.1, "adc: after the first opacity reset, prune Gaussians larger than this "
                             "(x the scene extent)", lo=0, lo_open=True)
    cap_max: int = opt(1_000_000, "mcmc: maximum number of Gaussians", lo=1)
    mcmc_grow_rate: float = opt(0.05, "mcmc: add this fraction of Gaussians per refinement", lo=0)
    mcmc_noise_lr: float = opt(5e5, "mcmc: position noise = position lr x this x covariance x gate", lo=0)
    mcmc_noise_in_radius: bool = opt(False, "mcmc with tr or adam-tr: clip each position-noise coordinate to "
                                     "the trust region's position radius (docs/densification.md)")
    opacity_reg: float = opt(0.01, "mcmc: weight of the L1 opacity regulariser", lo=0)
    opacity_reg_until_stop: bool = opt(False, "mcmc: apply the opacity regulariser only while relocating "
                                       "(after the last relocation it fades Gaussians that nothing reuses)")
    scale_reg: float = opt(0.01, "mcmc: weight of the L1 scale regulariser", lo=0)


@dataclass
class TrainConfig:
    """All knobs of one training run."""

    out: str = opt("", "output folder of the run")
    iters: int = opt(30_000, "number of training iterations", lo=1)
    seed: int = opt(0, "random seed (initialisation, view order, probes)", lo=0, hi=2**63 - 1)
    backend: str = opt("auto", "rendering backend (auto: cuda with a GPU, else cpu)", choices=("auto", *BACKENDS))
    lambda_dssim: float = opt(0.2, "weight of the D-SSIM term of the loss", lo=0, hi=1)
    sh_degree: int = opt(3, "maximum SH degree", lo=0, hi=3)
    sh_interval: int = opt(1000, "SH degree +1 every this many iterations (3DGS: 1000)", lo=1)
    batch_views: int | None = opt(None, "training views per step (|S1|), split across the processes of a "
                                  "torchrun launch (default: one per process)", lo=1)
    batch_scaling: bool = opt(True, "with --batch-views B > 1: Adam lr x sqrt(B), eps / sqrt(B), betas^B; "
                              "trust-region eps x B^2, EMA factors ^B (docs/training.md)")
    dist_check_every: int = opt(100, "torchrun: compare every rank's parameters every this many iterations",
                                lo=1)
    dist_timeout: float = opt(300.0, "torchrun: seconds a collective waits for the other processes before "
                              "the run stops", lo=0, lo_open=True)
    checkpoint_every: int = opt(1000, "iterations between checkpoints", lo=1)
    scene: SceneConfig = field(default_factory=SceneConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """A config from :meth:`to_dict`'s nested form or from a flat ``{leaf: value}`` dict
        (the ``config.json`` of earlier versions, and what the CLI and studies build)."""
        owner = leaf_owners()
        data = {RENAMED.get(k, k): v for k, v in data.items()}
        nested: dict[str, dict[str, Any]] = {name: {} for name in SUBCONFIGS}
        top: dict[str, Any] = {}
        unknown = []
        for key, value in data.items():
            if key in SUBCONFIGS and isinstance(value, dict):
                for leaf, v in value.items():
                    (nested[key].__setitem__(leaf, v) if owner.get(leaf) == key else unknown.append(f"{key}.{leaf}"))
            elif key in owner:
                (top if owner[key] is None else nested[owner[key]])[key] = value
            else:
                unknown.append(key)
        if unknown:
            raise TrsplatError(f"unknown config keys: {', '.join(sorted(unknown))}")
        cfg = cls(**top, **{name: sub(**nested[name]) for name, sub in SUBCONFIGS.items()})
        for f, owner, value in cfg.leaves():
            _check_type(f, typing.get_type_hints(type(owner))[f.name], value)
        return cfg

    @classmethod
    def make(cls, **flat: Any) -> "TrainConfig":
        """``TrainConfig.make(data=..., optimizer="tr", iters=500)``: a config from flat leaf values."""
        return cls.from_dict(flat)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """``{leaf name: value}`` over every sub-config (the CLI's view of the config)."""
        return {f.name: value for f, _, value in self.leaves()}

    def leaves(self) -> Iterator[tuple[Any, Any, Any]]:
        """``(field, owner object, value)`` for every leaf option."""
        for f in fields(self):
            value = getattr(self, f.name)
            if is_dataclass(value):
                for g in fields(value):
                    yield g, value, getattr(value, g.name)
            else:
                yield f, self, value

    # -- checks -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`TrsplatError` naming the option for any value outside its allowed set;
        warn about values that work but are probably not meant (see docs/training.md)."""
        for f, _, value in self.leaves():
            _check_field(f, value)
        if self.eval.eval_at is not None:
            bad = [i for i in self.eval.eval_at if i < 1 or i > self.iters]
            if bad:
                raise TrsplatError(f"--eval-at {bad} outside 1..--iters ({self.iters})")
            if self.eval.eval_at != sorted(set(self.eval.eval_at)):
                warn(f"--eval-at {self.eval.eval_at}: sorted and duplicates dropped")
                self.eval.eval_at = sorted(set(self.eval.eval_at))
        o = self.optim
        if o.tr_radius != "fixed" and o.optimizer != "tr":
            raise TrsplatError(f"--tr-radius {o.tr_radius} needs --optimizer tr, got --optimizer {o.optimizer}")
        if o.tr_damping != "none" and (o.tr_radius != "adaptive" or o.curvature == "none"):
            raise TrsplatError(f"--tr-damping {o.tr_damping} needs --tr-radius adaptive and a curvature estimator, "
                               f"got --tr-radius {o.tr_radius} --curvature {o.curvature}")
        if o.tr_step != "newton" and (o.optimizer != "tr" or o.curvature != "none" or o.step_norm != "none"):
            raise TrsplatError(f"--tr-step {o.tr_step} needs --optimizer tr --curvature none --step-norm none, got "
                               f"--optimizer {o.optimizer} --curvature {o.curvature} --step-norm {o.step_norm}")
        if o.residual_form == "sqrt" and o.residual_delta == 0:
            raise TrsplatError(f"--residual-delta must be > 0 for the sqrt residual, got {o.residual_delta}")
        for name in ("lr_means", "lr_sh_dc", "lr_sh_rest", "lr_opacity", "lr_scale", "lr_rotation"):
            if getattr(o, name) > 1:
                warn(f"--{name.replace('_', '-')} {getattr(o, name)} is far above the 3DGS value; expect divergence")
        if self.backend != "auto":
            try:
                get_backend(self.backend)
            except TrsplatError as exc:
                raise TrsplatError(f"--backend {self.backend}: {exc}") from None
        o.trust_region()

    def eval_iterations(self) -> list[int]:
        """The iterations evaluated: ``--eval-at`` (default: 3DGS's 7000, 15000 and 30000 within
        ``--iters``, ``iters // 2`` and ``iters``), always with the last iteration."""
        chosen = self.eval.eval_at
        if chosen is None:
            chosen = [i for i in (7000, 15000, 30000) if i <= self.iters] + [max(self.iters // 2, 1)]
        return sorted(set(chosen) | {self.iters})


RECIPES: dict[str, dict[str, Any]] = {
    "none": {},
    "3dgs": {"optimizer": "adam", "densify": "adc"},
    "3dgs-mcmc": {"optimizer": "adam", "densify": "mcmc"},
    "paper": {"optimizer": "tr", "densify": "none"},
    "tr-mcmc": {"optimizer": "tr", "curvature": "none", "tr_opacity_step": "adam", "densify": "mcmc",
                "mcmc_noise_in_radius": True, "opacity_reg_until_stop": True},
}
"""Named starting points of ``trsplat train --recipe``: option values that the options given on the
command line override. ``none``: every option at its own default (Adam, no densification);
``3dgs``: Adam with ADC (3DGS); ``3dgs-mcmc``: Adam with MCMC (3DGS-MCMC); ``paper``: 3DGS²-TR as
published, no densification; ``tr-mcmc``: trsplat's densified trust region (docs/training.md,
"Recipes", says which study chose each)."""

DEFAULT_RECIPE = "tr-mcmc"
"""The recipe of ``trsplat train`` without ``--recipe`` (docs/training.md, "Recipes")."""

RENAMED = {"grad_views": "batch_views"}
"""Options of earlier versions under their new names (their ``config.json`` files still load)."""

SUBCONFIGS = {"scene": SceneConfig, "eval": EvalConfig, "optim": OptimizerConfig, "strategy": StrategyConfig}


def leaf_owners() -> dict[str, str | None]:
    """Leaf option name -> the sub-config holding it (None: a field of TrainConfig itself)."""
    owners: dict[str, str | None] = {f.name: None for f in fields(TrainConfig) if f.name not in SUBCONFIGS}
    for name, sub in SUBCONFIGS.items():
        owners.update({f.name: name for f in fields(sub)})
    return owners


def field_default(f) -> Any:
    return f.default_factory() if f.default is MISSING else f.default


def _check_type(f, hint: Any, value: Any) -> None:
    """A config.json value of the wrong type (e.g. ``"iters": "ten"``) names its option."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return
    for kind in allowed:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if kind == list[int] and isinstance(value, list) and all(
                isinstance(v, int) and not isinstance(v, bool) for v in value):
            return
        if kind in (bool, str) and isinstance(value, kind):
            return
    names = " or ".join("list of int" if k == list[int] else getattr(k, "__name__", str(k)) for k in allowed)
    raise TrsplatError(f"--{f.name.replace('_', '-')}: expected {names}, got {value!r}")


def _check_field(f, value: Any) -> None:
    meta, flag = f.metadata, "--" + f.name.replace("_", "-")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise TrsplatError(f"{flag} {value!r}: choose one of {', '.join(choices)}")
    lo, hi = meta.get("lo"), meta.get("hi")
    if value is None or isinstance(value, (bool, str, list)) or (lo is None and hi is None):
        return
    low_ok = lo is None or (value > lo if meta["lo_open"] else value >= lo)
    high_ok = hi is None or (value < hi if meta["hi_open"] else value <= hi)
    if not (low_ok and high_ok and math.isfinite(value)):
        left = "(" if meta["lo_open"] else "["
        right = ")" if meta["hi_open"] else "]"
        span = f"{left}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}{right}"
        raise TrsplatError(f"{flag} must lie in {span}, got {value}")
