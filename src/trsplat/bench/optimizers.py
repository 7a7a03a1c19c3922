"""``trsplat bench optimizers``: the optimizer study (issue #6).

A **study** is a grid of optimizer *variants* × *scenes* × *seeds*. Every cell is an ordinary
``trsplat train`` run folder, ``OUT/runs/<scene>/<variant>/seed<k>``, and the study is driven by a
small spec (a preset chosen by name, or a JSON file):

* ``scenes``: name → ``{"path": ..., "options": {TrainConfig overrides}, "generate": {...}}``.
  Scene options hold everything that defines the data and the initialisation (``downscale``,
  ``max_test_views``, ``n_random_init``, ...). A scene with ``generate`` is the synthetic scene of
  :mod:`trsplat.synthetic`, built on demand (``path`` relative to ``OUT``) when it is missing.
* ``variants``: name → ``{"overrides": {TrainConfig overrides}, "eps": "paper"|"rebuttal"|...,
  "meta": {...}}``. A variant may only change the optimiser: overriding an initialisation or
  evaluation option (:data:`FIXED_KEYS`) is refused, so all variants of one (scene, seed) start
  from the **same initial Gaussians** (the init depends only on the scene options and the seed)
  and are evaluated on the same views at the same iterations. ``meta`` (derived from the
  overrides when absent) says what a variant is: ``{"optimizer": "tr", "curvature":
  "hutchinson", "eps": "paper"}``, plus ``"ablation"`` for any other override.
* ``reference``: the ADAM variant every derived figure compares against (default ``"adam"``).
* ``seeds``, ``iters``, ``eval_fraction`` (evaluate every 10 % of the run) and
  ``table_fractions`` (the columns of the Table-1 layout; default 7/30, 1/2, 1, the paper's
  7k/15k/30k; they are added to the eval iterations).
* ``common``: TrainConfig overrides for every run (``backend``, ``lpips``, ...).

There is no densification in trsplat, so none in the study (the paper's protocol).

Running is resumable: a finished run (last eval at ``iters`` and ``point_cloud.ply`` present) is
skipped, an interrupted one (``checkpoint.pt`` present) is resumed, a missing one is started; a
run folder whose ``config.json`` differs from what the spec asks for is an error, never silently
mixed in. Each run executes in its own Python process (so ``peak_rss_bytes`` is that run's peak),
``--jobs N`` runs N at once with ``cores // N`` torch/numba threads each.

Aggregation reads only the run folders' ``metrics.json`` / ``config.json`` and can be re-run at
any time (``--only-aggregate``), also on a partial study. It writes ``OUT/results.json``,
``OUT/results.md`` and ``OUT/plots/*.png``. Conventions of the derived figures (stored per scene,
and for the scene average, in ``results.json``):

* curves (tables, plots): mean ± sample std (ddof 1) over the seeds that have the eval,
  **any** run state; derived figures and verdicts use **finished** runs only, over the seeds for
  which both compared variants finished;
* ``quality_gap[v]``: ``v − reference`` in PSNR, SSIM and LPIPS at each eval iteration (mean and
  std of the paired per-seed differences; for LPIPS negative is better);
* ``iteration_ratio[v]``: first eval iteration at which the seed-mean PSNR curve of ``v`` is
  ≥ the reference's seed-mean final PSNR, divided by the reference's final iteration; null if
  never reached;
* ``time_ratio[v]``: **first-eval rule**: the mean train seconds of ``v`` at that same eval
  iteration (no interpolation between evals; an upper bound at the eval resolution), divided by
  the reference's mean total train seconds; null if never reached, or if the evals involved
  record different ``machine``s, or some record one and some none (train seconds from two
  machines do not compare);
* ``memory_ratio[v]``: mean peak RSS (and peak CUDA memory, when recorded) of ``v`` / reference;
* ``curvature_gain[v]``: PSNR of a ``tr`` variant minus the ``tr`` variant whose meta is the
  same except ``curvature: none``, at each eval iteration.

The scene average ("average") is, per seed, the mean over scenes (only where every scene has the
value), then mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from trsplat.bench.machine import cpu_model, memory_bytes, usable_cores
from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError
from trsplat.io_utils import atomic_write, write_json

CHECKPOINT = "checkpoint.pt"
CONFIG = "config.json"
METRICS = "metrics.json"
PLY = "point_cloud.ply"
STUDY_FILE = "study.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
FAILURES_FILE = "failures.json"
INVOCATIONS_FILE = "invocations.json"
AVERAGE = "average"

# Set by the study, never by a spec: where the data is, where the run goes, its seed and length.
RUN_KEYS = ("data", "out", "seed", "iters", "eval_at")
# What a variant may not change: the initial Gaussians depend only on these (with the seed), and
# the evaluation protocol must be the same for every variant.
INIT_KEYS = ("init", "n_random_init", "init_box", "downscale", "llffhold", "background")
EVAL_KEYS = ("max_test_views", "lpips")
FIXED_KEYS = RUN_KEYS + INIT_KEYS + EVAL_KEYS

EPS_SCHEDULES = {"paper": (1e-6, 1e-8), "rebuttal": (1e-5, 1e-7), "small": (1e-7, 1e-9)}
TR_OPTIMIZERS = ("tr", "adam-tr")
QUALITY = ("psnr", "ssim", "lpips")
EVAL_VALUES = ("psnr", "ssim", "lpips", "lpips_corrected", "lpips_alex", "train_seconds",
               "seconds_per_iteration")
UNKNOWN_MACHINE = "unknown machine"
LOWER_IS_BETTER = {"lpips", "lpips_corrected", "lpips_alex"}

_here = Path(__file__).resolve()
DEFAULT_DATA_ROOT = _here.parents[4] / "shared" / "data" if len(_here.parents) > 4 else Path("/work/shared/data")
if not DEFAULT_DATA_ROOT.exists():  # installed elsewhere: the project's shared folder
    DEFAULT_DATA_ROOT = Path("/work/shared/data")


# =================================================================================================
# The study spec
# =================================================================================================
@dataclass
class SceneSpec:
    name: str
    path: str
    options: dict[str, Any] = field(default_factory=dict)
    generate: dict[str, Any] | None = None   # make_synthetic_scene(path, **generate) when missing


@dataclass
class VariantSpec:
    name: str
    overrides: dict[str, Any]
    meta: dict[str, Any]


@dataclass
class StudySpec:
    name: str
    scenes: dict[str, SceneSpec]
    variants: dict[str, VariantSpec]
    seeds: list[int]
    iters: int
    eval_fraction: float = 0.1
    table_fractions: list[float] = field(default_factory=lambda: [7 / 30, 0.5, 1.0])
    reference: str = "adam"
    common: dict[str, Any] = field(default_factory=dict)
    source: str = ""            # where the spec came from (preset name or file)

    # -- iterations ------------------------------------------------------------------------
    def eval_iterations(self) -> list[int]:
        """Every ``eval_fraction`` of the run, the table iterations and the last iteration."""
        n = max(1, int(math.ceil(1.0 / self.eval_fraction - 1e-9)))
        its = {_round_it(self.iters * min(1.0, k * self.eval_fraction)) for k in range(1, n + 1)}
        its |= set(self.table_iterations())
        its.add(self.iters)
        return sorted(i for i in its if 1 <= i <= self.iters)

    def table_iterations(self) -> list[int]:
        return sorted({max(1, min(self.iters, _round_it(self.iters * f))) for f in self.table_fractions})

    def half_iteration(self) -> int:
        """The eval iteration nearest to ``iters / 2`` (the paper's "50 % of the iterations")."""
        return min(self.eval_iterations(), key=lambda i: (abs(i - self.iters / 2), i))

    # -- run configurations ----------------------------------------------------------------
    def scene_path(self, scene: str, out_dir: str | Path) -> Path:
        s = self.scenes[scene]
        p = Path(s.path).expanduser()
        if not p.is_absolute() and s.generate is not None:
            p = Path(out_dir) / p
        return p

    def run_config(self, scene: str, variant: str, seed: int, out_dir: str | Path) -> TrainConfig:
        values: dict[str, Any] = {}
        values.update(copy.deepcopy(self.common))
        values.update(copy.deepcopy(self.scenes[scene].options))
        values.update(copy.deepcopy(self.variants[variant].overrides))
        values.update(data=str(self.scene_path(scene, out_dir)), out=str(run_dir(out_dir, scene, variant, seed)),
                      seed=int(seed), iters=int(self.iters), eval_at=self.eval_iterations())
        return TrainConfig(**values)

    # -- (de)serialisation -----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "source": self.source, "iters": self.iters, "seeds": list(self.seeds),
            "eval_fraction": self.eval_fraction, "table_fractions": list(self.table_fractions),
            "reference": self.reference, "common": dict(self.common),
            "scenes": {k: {"path": s.path, "options": dict(s.options),
                           **({"generate": dict(s.generate)} if s.generate is not None else {})}
                       for k, s in self.scenes.items()},
            "variants": {k: {"overrides": dict(v.overrides), "meta": dict(v.meta)} for k, v in self.variants.items()},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "", base_dir: Path | None = None,
                  data_root: str | Path | None = None) -> "StudySpec":
        """Parse and validate a spec dict (``base_dir`` resolves relative data paths)."""
        if not isinstance(data, dict):
            raise TrsplatError(f"{source or 'study spec'}: expected a JSON object")
        known = {"name", "source", "iters", "seeds", "eval_fraction", "table_fractions", "reference",
                 "common", "scenes", "variants", "description"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrsplatError(f"{source or 'study spec'}: unknown keys {', '.join(unknown)} "
                               f"(known: {', '.join(sorted(known))})")
        for key in ("scenes", "variants", "iters", "seeds"):
            if key not in data:
                raise TrsplatError(f"{source or 'study spec'}: missing {key!r}")
        root = str(data_root if data_root is not None else DEFAULT_DATA_ROOT)
        scenes: dict[str, SceneSpec] = {}
        for name, entry in data["scenes"].items():
            _check_name(name, "scene")
            if isinstance(entry, str):
                entry = {"path": entry}
            extra = sorted(set(entry) - {"path", "options", "generate"})
            if extra or "path" not in entry:
                raise TrsplatError(f"scene {name!r}: expected keys path, options, generate (got {sorted(entry)})")
            path = str(entry["path"]).replace("${data_root}", root)
            if entry.get("generate") is None and base_dir is not None and not Path(path).expanduser().is_absolute():
                path = str((base_dir / path).resolve())
            options = dict(entry.get("options") or {})
            _check_overrides(options, f"scene {name!r} options", forbidden=RUN_KEYS)
            generate = entry.get("generate")
            if generate is not None:
                generate = dict(generate)
                bad = sorted(set(generate) - {"size", "n_train", "n_test", "radius", "seed"})
                if bad:
                    raise TrsplatError(f"scene {name!r}: unknown generate options {', '.join(bad)}")
            scenes[name] = SceneSpec(name, path, options, generate)
        variants: dict[str, VariantSpec] = {}
        for name, entry in data["variants"].items():
            _check_name(name, "variant")
            variants[name] = _parse_variant(name, entry)
        common = dict(data.get("common") or {})
        _check_overrides(common, "common", forbidden=RUN_KEYS)
        try:
            iters = int(data["iters"])
            seeds = [int(s) for s in data["seeds"]]
            eval_fraction = float(data.get("eval_fraction", 0.1))
            table_fractions = [float(f) for f in data.get("table_fractions", [7 / 30, 0.5, 1.0])]
        except (TypeError, ValueError) as exc:
            raise TrsplatError(f"{source or 'study spec'}: {exc}") from None
        spec = cls(name=str(data.get("name", source or "study")), scenes=scenes, variants=variants,
                   seeds=seeds, iters=iters, eval_fraction=eval_fraction, table_fractions=table_fractions,
                   reference=str(data.get("reference", "adam")), common=common,
                   source=str(data.get("source") or source))
        spec.validate()
        return spec

    def validate(self) -> None:
        if self.iters < 1:
            raise TrsplatError(f"study iters must be >= 1, got {self.iters}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise TrsplatError(f"study seeds must be distinct and non-empty, got {self.seeds}")
        if not 0 < self.eval_fraction <= 1:
            raise TrsplatError(f"eval_fraction must be in (0, 1], got {self.eval_fraction}")
        if any(not 0 < f <= 1 for f in self.table_fractions) or not self.table_fractions:
            raise TrsplatError(f"table_fractions must be in (0, 1], got {self.table_fractions}")
        if not self.scenes or not self.variants:
            raise TrsplatError("a study needs at least one scene and one variant")
        if self.reference not in self.variants:
            raise TrsplatError(f"reference variant {self.reference!r} is not among the variants "
                               f"({', '.join(self.variants)})")

    def select(self, scenes: list[str] | None = None, variants: list[str] | None = None,
               seeds: list[int] | None = None) -> "StudySpec":
        """A copy restricted to the named scenes / variants / seeds (unknown ones are an error)."""
        spec = copy.deepcopy(self)
        if seeds is not None:
            bad = [str(s) for s in seeds if s not in spec.seeds]
            if bad:
                raise TrsplatError(f"unknown seed(s) {', '.join(bad)}; the study has {spec.seeds}")
            spec.seeds = [s for s in spec.seeds if s in seeds]
        for what, names, table in (("scene", scenes, spec.scenes), ("variant", variants, spec.variants)):
            if names is None:
                continue
            bad = [n for n in names if n not in table]
            if bad:
                raise TrsplatError(f"unknown {what}(s) {', '.join(bad)}; the study has {', '.join(table)}")
            for k in list(table):
                if k not in names:
                    del table[k]
        return spec


def _round_it(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_name(name: str, what: str) -> None:
    if not name or any(c in name for c in "/\\ \t\n") or name in (".", "..", AVERAGE):
        raise TrsplatError(f"{what} name {name!r}: use letters, digits, '-', '_' or '.' (and not {AVERAGE!r})")


def _check_overrides(values: dict[str, Any], where: str, *, forbidden: Iterable[str]) -> None:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrsplatError(f"{where}: unknown TrainConfig option(s) {', '.join(unknown)}")
    bad = sorted(set(values) & set(forbidden))
    if bad:
        raise TrsplatError(f"{where}: may not set {', '.join(bad)}")


def _parse_variant(name: str, entry: dict[str, Any]) -> VariantSpec:
    if not isinstance(entry, dict):
        raise TrsplatError(f"variant {name!r}: expected an object with overrides/eps/meta")
    extra = sorted(set(entry) - {"overrides", "eps", "meta", "description"})
    if extra:
        raise TrsplatError(f"variant {name!r}: unknown keys {', '.join(extra)} (use overrides, eps, meta)")
    overrides = dict(entry.get("overrides") or {})
    _check_overrides(overrides, f"variant {name!r}", forbidden=FIXED_KEYS)
    eps = entry.get("eps")
    if eps is not None:
        if eps not in EPS_SCHEDULES:
            raise TrsplatError(f"variant {name!r}: eps {eps!r}: choose {', '.join(EPS_SCHEDULES)} "
                               f"or set eps_start/eps_end in overrides")
        overrides.setdefault("eps_start", EPS_SCHEDULES[eps][0])
        overrides.setdefault("eps_end", EPS_SCHEDULES[eps][1])
    meta = dict(entry["meta"]) if entry.get("meta") is not None else derive_meta(overrides)
    meta.setdefault("optimizer", overrides.get("optimizer", "adam"))
    if entry.get("description"):
        meta.setdefault("description", entry["description"])
    return VariantSpec(name, overrides, meta)


def derive_meta(overrides: dict[str, Any]) -> dict[str, Any]:
    """What a variant is, from its overrides: optimizer, curvature (tr), ε schedule (TR), ablation."""
    defaults = TrainConfig()
    optimizer = overrides.get("optimizer", defaults.optimizer)
    meta: dict[str, Any] = {"optimizer": optimizer}
    used = {"optimizer"}
    if optimizer == "tr":
        meta["curvature"] = overrides.get("curvature", defaults.curvature)
        used.add("curvature")
    if optimizer in TR_OPTIMIZERS:
        pair = (overrides.get("eps_start", defaults.eps_start), overrides.get("eps_end", defaults.eps_end))
        meta["eps"] = next((k for k, v in EPS_SCHEDULES.items() if v == tuple(float(x) for x in pair)),
                           f"{pair[0]:g}->{pair[1]:g}")
        used |= {"eps_start", "eps_end"}
    rest = {k: v for k, v in sorted(overrides.items()) if k not in used}
    if rest:
        meta["ablation"] = ",".join(f"{k}={v}" for k, v in rest.items())
    return meta


# -- presets ----------------------------------------------------------------------------------------
def _variant_entry(optimizer: str, curvature: str | None = None, eps: str | None = None,
                   **extra: Any) -> dict[str, Any]:
    overrides: dict[str, Any] = {"optimizer": optimizer}
    if curvature is not None:
        overrides["curvature"] = curvature
    overrides.update(extra)
    entry: dict[str, Any] = {"overrides": overrides}
    if eps is not None:
        entry["eps"] = eps
    return entry


def _paper_variants() -> dict[str, dict[str, Any]]:
    variants: dict[str, dict[str, Any]] = {"adam": _variant_entry("adam")}
    for eps in ("paper", "rebuttal"):
        variants[f"adam-tr-{eps}"] = _variant_entry("adam-tr", eps=eps)
    for eps in ("paper", "rebuttal"):
        for curvature in ("hutchinson", "gnb", "none"):
            variants[f"tr-{curvature}-{eps}"] = _variant_entry("tr", curvature, eps)
    return variants


def _ablation_variants() -> dict[str, dict[str, Any]]:
    """3DGS²-TR (Hutchinson, paper ε) with one decision changed each (see docs/optimizer.md), the
    opacity guard at the rebuttal ε, and Adam with its position-lr decay fitted to the run."""
    hut = dict(optimizer="tr", curvature="hutchinson", eps="paper")
    return {
        # fairness control for the adam side: 3DGS decays the position lr over 30k steps whatever the
        # run length, while tr's ε schedule always spans the run; this Adam decays over the run too
        "adam-run-decay": _variant_entry("adam", lr_means_max_steps=None),
        "tr-hutchinson-small": _variant_entry("tr", "hutchinson", "small"),
        "tr-hutchinson-paper-kernel-exact": _variant_entry(
            **hut, tr_color_floor=0.0, tr_rest_radius_from_box=True, tr_opacity_box_mode="kernel",
            tr_scale_min_ratio=None),
        "tr-hutchinson-paper-printed-bounds": _variant_entry(**hut, tr_bounds="paper", tr_split_budget=False),
        # its curvature-free control: do the printed bounds help the curvature or only the radii?
        "tr-none-paper-printed-bounds": _variant_entry("tr", "none", "paper", tr_bounds="paper",
                                                       tr_split_budget=False),
        "tr-hutchinson-paper-exact-mass": _variant_entry(**hut, tr_mass_bounds="exact"),
        "tr-hutchinson-paper-guard-abs": _variant_entry(**hut, guard="abs"),
        "tr-hutchinson-paper-l2-residual": _variant_entry(**hut, residual_form="l2"),
        "tr-hutchinson-paper-bias-correction": _variant_entry(**hut, bias_correction=True),
        "tr-hutchinson-paper-interval1": _variant_entry(**hut, curvature_interval=1),
        # the opacity guard: the rebuttal's larger ε for every parameter but opacity, whose radius
        # stays at the paper's ε (ε_op = 0.1·ε), with its curvature-free control. Asks whether
        # larger radii let the curvature pay once they no longer kill Gaussians.
        "tr-hutchinson-rebuttal-opacity-eps0.1": _variant_entry("tr", "hutchinson", "rebuttal",
                                                                tr_opacity_eps_scale=0.1),
        "tr-none-rebuttal-opacity-eps0.1": _variant_entry("tr", "none", "rebuttal", tr_opacity_eps_scale=0.1),
        # Newton steps rescaled per tensor so their median |Δ|/radius is 1: the curvature, not only
        # the bound, sets step sizes. With `none` (D = 0) this is a per-tensor scaled gradient step,
        # the first-order control.
        **{f"tr-{c}-paper-median-radius": _variant_entry("tr", c, "paper", step_norm="median-radius")
           for c in ("hutchinson", "gnb", "none")},
        # both: the guarded rebuttal ε gives the median-radius steps the larger radii they lacked
        **{f"tr-{c}-rebuttal-opacity-eps0.1-median-radius": _variant_entry(
            "tr", c, "rebuttal", tr_opacity_eps_scale=0.1, step_norm="median-radius") for c in ("gnb", "none")},
        # the printed bounds (the best radii within the paper) with a quarter of each tensor's
        # coordinates steered by the curvature: between the clipped sign steps (quantile → 0) and
        # the median-radius scheme (0.5), which gained over its control but lost to sign steps
        **{f"tr-{c}-paper-printed-bounds-q0.25-radius": _variant_entry(
            "tr", c, "paper", tr_bounds="paper", tr_split_budget=False, step_norm="median-radius",
            step_norm_quantile=0.25) for c in ("gnb", "none")},
    }


def _paper_scenes() -> dict[str, dict[str, Any]]:
    return {
        # NeRF-synthetic chair: random init (100k, the 3DGS count), 200x200, 25 evenly spaced test views
        "nerf_synthetic_chair": {"path": "${data_root}/nerf_synthetic_chair",
                                 "options": {"downscale": 4, "max_test_views": 25, "n_random_init": 100_000}},
        # colmap_bird: SfM init (6,271 points), 136x240, every 8th image a test view (23)
        "colmap_bird": {"path": "${data_root}/colmap_bird", "options": {"downscale": 4}},
        # the generated scene with known ground truth (2,400 Gaussians), built into OUT/scenes/
        "synthetic": {"path": "scenes/synthetic", "generate": {"size": 128, "n_train": 48, "n_test": 12},
                      "options": {"n_random_init": 10_000}},
    }


PRESETS: dict[str, dict[str, Any]] = {
    "paper-study": {
        "description": "issue #6: adam, adam-tr and tr (hutchinson/gnb/none) at the paper and rebuttal "
                       "eps schedules, on chair, bird and the synthetic scene, 3 seeds, 30k iterations",
        "iters": 30_000, "seeds": [0, 1, 2], "eval_fraction": 0.1, "table_fractions": [7 / 30, 0.5, 1.0],
        "reference": "adam", "common": {"lpips": True},
        "scenes": _paper_scenes(), "variants": _paper_variants(),
    },
    "ablations": {
        "description": "3DGS²-TR ablations (one decision changed each) against adam and tr-{hutchinson,none}-"
                       "{paper,rebuttal}, same scenes and protocol as paper-study",
        "iters": 30_000, "seeds": [0, 1, 2], "eval_fraction": 0.1, "table_fractions": [7 / 30, 0.5, 1.0],
        "reference": "adam", "common": {"lpips": True},
        "scenes": _paper_scenes(),
        "variants": {"adam": _variant_entry("adam"),
                     "tr-hutchinson-paper": _variant_entry("tr", "hutchinson", "paper"),
                     "tr-none-paper": _variant_entry("tr", "none", "paper"),
                     "tr-hutchinson-rebuttal": _variant_entry("tr", "hutchinson", "rebuttal"),
                     "tr-none-rebuttal": _variant_entry("tr", "none", "rebuttal"),
                     **_ablation_variants()},
    },
    "quick": {
        "description": "small: the synthetic scene at 64 px, 4 variants, 2 seeds, 200 iterations, no LPIPS "
                       "(checks the pipeline, not the paper's claims)",
        "iters": 200, "seeds": [0, 1], "eval_fraction": 0.1, "table_fractions": [7 / 30, 0.5, 1.0],
        "reference": "adam", "common": {"lpips": False, "n_saved_renders": 1},
        "scenes": {"synthetic": {"path": "scenes/synthetic-64",
                                 "generate": {"size": 64, "n_train": 24, "n_test": 6},
                                 "options": {"n_random_init": 2000}}},
        "variants": {"adam": _variant_entry("adam"), "adam-tr-paper": _variant_entry("adam-tr", eps="paper"),
                     "tr-hutchinson-paper": _variant_entry("tr", "hutchinson", "paper"),
                     "tr-none-paper": _variant_entry("tr", "none", "paper")},
    },
}


def load_spec(*, preset: str | None = None, spec_file: str | Path | None = None,
              data_root: str | Path | None = None) -> StudySpec:
    """A :class:`StudySpec` from a preset name or a JSON file."""
    if preset is not None and spec_file is not None:
        raise TrsplatError("give either --preset or --spec, not both")
    if spec_file is not None:
        path = Path(spec_file)
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise TrsplatError(f"{path}: cannot read the study spec ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise TrsplatError(f"{path}: not valid JSON ({exc})") from None
        data.setdefault("name", path.stem)
        return StudySpec.from_dict(data, source=str(path), base_dir=path.resolve().parent, data_root=data_root)
    name = preset or "paper-study"
    if name not in PRESETS:
        raise TrsplatError(f"--preset {name!r}: choose one of {', '.join(PRESETS)}")
    data = copy.deepcopy(PRESETS[name])
    data["name"] = name
    return StudySpec.from_dict(data, source=f"preset {name}", data_root=data_root)


# =================================================================================================
# Run folders: state, plan, execution
# =================================================================================================
def _print(msg: str) -> None:
    print(msg, flush=True)


def run_dir(out_dir: str | Path, scene: str, variant: str, seed: int) -> Path:
    return Path(out_dir) / "runs" / scene / variant / f"seed{seed}"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _completed(path: Path, metrics: dict[str, Any] | None, last_eval: int, iters: int) -> bool:
    """A run is complete when its last eval is at ``iters`` and the trainer wrote the PLY, which
    ``metrics.json`` records as ``"finished": true`` (so a folder reduced to ``metrics.json`` and
    ``config.json``, as committed under ``benchmarks/results/``, stays finished)."""
    return last_eval == iters and (bool((metrics or {}).get("finished")) or (path / PLY).is_file())


def run_state(path: str | Path, iters: int) -> str:
    """``"finished"`` (see :func:`_completed`), ``"interrupted"`` (a checkpoint to resume from) or
    ``"missing"``."""
    path = Path(path)
    metrics = _read_json(path / METRICS)
    evals = (metrics or {}).get("evals") or []
    if evals and _completed(path, metrics, max(e.get("iteration", 0) for e in evals), iters):
        return "finished"
    if (path / CHECKPOINT).is_file():
        return "interrupted"
    return "missing"


def config_differences(stored: dict[str, Any], wanted: TrainConfig) -> list[str]:
    """Options in which a run folder's ``config.json`` differs from ``wanted`` (``out`` ignored)."""
    try:
        have = TrainConfig.from_dict(dict(stored)).to_dict()
    except (TrsplatError, TypeError) as exc:
        return [f"config.json unreadable ({exc})"]
    want = wanted.to_dict()
    diffs = []
    for key, value in want.items():
        if key == "out":
            continue
        other = have.get(key)
        if key == "data":
            same = Path(str(other)).expanduser().resolve() == Path(str(value)).expanduser().resolve()
        else:
            same = other == value
        if not same:
            diffs.append(f"{key}: {other!r} (run) != {value!r} (study)")
    return diffs


@dataclass
class Task:
    scene: str
    variant: str
    seed: int
    path: Path
    config: TrainConfig
    action: str          # start | resume | skip

    @property
    def key(self) -> str:
        return f"{self.scene}/{self.variant}/seed{self.seed}"


def plan_runs(spec: StudySpec, out_dir: str | Path) -> list[Task]:
    """Every run of ``spec`` with what to do about it: skip (finished), resume or start.

    Order: seed, then scene, then variant (reference first), so a partial study has complete
    comparisons for the first seeds. Raises :class:`TrsplatError` for an invalid configuration
    or a run folder trained with another configuration.
    """
    tasks = []
    variants = sorted(spec.variants, key=lambda v: v != spec.reference)  # reference first
    for seed in spec.seeds:
        for scene in spec.scenes:
            for variant in variants:
                cfg = spec.run_config(scene, variant, seed, out_dir)
                cfg.validate()
                path = run_dir(out_dir, scene, variant, seed)
                state = run_state(path, spec.iters)
                if state != "missing":
                    stored = _read_json(path / CONFIG)
                    diffs = config_differences(stored, cfg) if isinstance(stored, dict) else ["no config.json"]
                    if diffs:
                        raise TrsplatError(
                            f"{path} was trained with another configuration ({'; '.join(diffs[:4])}"
                            f"{'; ...' if len(diffs) > 4 else ''}); delete that folder or use another --out")
                action = {"finished": "skip", "interrupted": "resume", "missing": "start"}[state]
                tasks.append(Task(scene, variant, seed, path, cfg, action))
    return tasks


def ensure_scenes(spec: StudySpec, out_dir: str | Path, log: Callable[[str], None] = _print) -> None:
    """Generate missing synthetic scenes (atomically: into a temporary folder, then renamed);
    check that the other scene folders exist."""
    for name, scene in spec.scenes.items():
        path = spec.scene_path(name, out_dir)
        if scene.generate is None:
            if not path.exists():
                raise TrsplatError(f"scene {name!r}: {path} does not exist (set its path in the spec, "
                                   f"or --data-root for the presets)")
            continue
        if (path / "ground_truth.ply").is_file() and (path / "transforms_test.json").is_file():
            continue
        if path.exists() and any(path.iterdir()):
            raise TrsplatError(f"scene {name!r}: {path} exists but is not a complete generated scene; "
                               f"delete it to have it generated again")
        from trsplat.synthetic import make_synthetic_scene

        log(f"generating the synthetic scene {name!r} into {path} ...")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        make_synthetic_scene(tmp, **scene.generate)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.rmdir()
        os.replace(tmp, path)


def _log_path(out_dir: Path, task: Task) -> Path:
    return out_dir / "logs" / task.scene / task.variant / f"seed{task.seed}.log"


def _worker_env(threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "TRSPLAT_BENCH_THREADS"):
            env[var] = str(threads)
    return env


def _worker_command(task: Task) -> list[str]:
    cmd = [sys.executable, "-m", "trsplat.bench.optimizers", "--worker"]
    if task.action == "resume":
        return cmd + ["resume", str(task.path)]
    return cmd + ["start", json.dumps(task.config.to_dict())]


def _tail(path: Path, n: int = 6) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("train ")]  # tqdm progress lines
    return "\n".join(lines[-n:])


def _final_line(path: Path) -> str:
    metrics = _read_json(path / METRICS) or {}
    evals = metrics.get("evals") or []
    if not evals:
        return ""
    last = max(evals, key=lambda e: e.get("iteration", 0))
    return (f"iter {last.get('iteration')}: PSNR {last.get('psnr', float('nan')):.2f}, "
            f"{last.get('seconds_per_iteration', float('nan')):.3f} s/it")


class StudyInterrupted(Exception):
    """Ctrl-C / SIGTERM during the study: runs have saved their checkpoints."""


def execute(tasks: list[Task], out_dir: str | Path, *, jobs: int = 1, threads: int | None = None,
            isolate: bool = True, log: Callable[[str], None] = _print) -> dict[str, str]:
    """Run the ``start``/``resume`` tasks; returns ``{task.key: "ok" | error message}``.

    ``isolate``: each run in its own process (``python -m trsplat.bench.optimizers --worker``),
    ``jobs`` at once, output in ``OUT/logs/...``. Otherwise in this process, one after another
    (then ``peak_rss_bytes`` is this process's peak so far). A failing run is recorded in
    ``OUT/failures.json`` and the study goes on. Raises :class:`StudyInterrupted` on Ctrl-C.
    """
    out_dir = Path(out_dir)
    todo = [t for t in tasks if t.action != "skip"]
    results: dict[str, str] = {}
    if not todo:
        return results
    if not isolate and jobs != 1:
        raise TrsplatError("--jobs > 1 needs isolated processes (drop --no-isolate)")
    failures_path = out_dir / FAILURES_FILE

    def record(task: Task, outcome: str) -> None:
        results[task.key] = outcome
        failures = _read_json(failures_path) or {}
        if outcome == "ok":
            failures.pop(task.key, None)
        else:
            failures[task.key] = {"error": outcome, "date": _now()}
        write_json(failures_path, failures)

    total = len(todo)
    if not isolate:
        from trsplat import train as train_mod

        for k, task in enumerate(todo, 1):
            log(f"[{k}/{total}] {task.action} {task.key}")
            t0 = time.perf_counter()
            try:
                if task.action == "resume":
                    train_mod.resume(task.path)
                else:
                    train_mod.train(task.config)
            except TrsplatError as exc:
                if str(exc).startswith("interrupted at iteration"):
                    raise StudyInterrupted(str(exc)) from None
                log(f"    FAILED: {exc}")
                record(task, str(exc))
                continue
            except KeyboardInterrupt:
                raise StudyInterrupted(task.key) from None
            record(task, "ok")
            log(f"    done in {time.perf_counter() - t0:.0f} s ({_final_line(task.path)})")
        return results

    env = _worker_env(threads)
    queue = list(enumerate(todo, 1))
    running: list[tuple[Task, subprocess.Popen, Any, float]] = []

    def finish(task: Task, proc: subprocess.Popen, fh, t0: float) -> None:
        fh.close()
        if proc.returncode == 0:
            record(task, "ok")
            log(f"    done {task.key} in {time.perf_counter() - t0:.0f} s ({_final_line(task.path)})")
        else:
            msg = _tail(_log_path(out_dir, task)) or f"exit status {proc.returncode}"
            log(f"    FAILED {task.key} (exit {proc.returncode}, log {_log_path(out_dir, task)}):\n"
                + "\n".join("      " + ln for ln in msg.splitlines()))
            record(task, msg)

    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                k, task = queue.pop(0)
                log_file = _log_path(out_dir, task)
                log_file.parent.mkdir(parents=True, exist_ok=True)
                fh = open(log_file, "a")
                fh.write(f"\n=== {_now()} {task.action} {task.key}\n")
                fh.flush()
                log(f"[{k}/{total}] {task.action} {task.key}")
                proc = subprocess.Popen(_worker_command(task), stdout=fh, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=env)
                running.append((task, proc, fh, time.perf_counter()))
            time.sleep(0.2)
            still = []
            for item in running:
                if item[1].poll() is None:
                    still.append(item)
                else:
                    finish(*item)
            running = still
    except KeyboardInterrupt:
        log("interrupted: waiting for the running trainings to save their checkpoints ...")
        _stop_children(running)
        raise StudyInterrupted("interrupted") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    return results


def _stop_children(running) -> None:
    deadline = time.time() + 5.0     # a terminal Ctrl-C reached the children already
    for _, proc, _, _ in running:
        try:
            proc.wait(timeout=max(0.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for _, proc, _, _ in running:   # SIGTERM: trsplat train saves a checkpoint, as on Ctrl-C
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for _, proc, fh, _ in running:
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        fh.close()


def _raise_keyboard_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _worker_main(argv: list[str]) -> int:
    """``python -m trsplat.bench.optimizers --worker start CONFIG_JSON | resume DIR``."""
    threads = os.environ.get("TRSPLAT_BENCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from trsplat.train import resume, train

    try:
        if argv[0] == "resume":
            metrics = resume(argv[1])
        else:
            metrics = train(TrainConfig.from_dict(json.loads(argv[1])))
    except TrsplatError as exc:
        print(f"trsplat: error: {exc}", file=sys.stderr)
        return 2
    last = metrics["evals"][-1]
    print(json.dumps({k: last.get(k) for k in ("iteration", "psnr", "ssim", "lpips", "train_seconds")}))
    return 0


# =================================================================================================
# Aggregation
# =================================================================================================
@dataclass
class RunData:
    """What aggregation needs from one run folder."""

    state: str                                  # finished | partial | missing | failed
    evals: dict[int, dict[str, float | None]]   # iteration -> values of EVAL_VALUES
    last_iteration: int = 0
    peak_rss_bytes: float | None = None
    peak_cuda_bytes: float | None = None
    on_bound_fraction: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    backend: str | None = None
    n_gaussians: int | None = None
    machines: dict[int, str] = field(default_factory=dict)  # iteration -> machine label (newer runs)

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def value(self, key: str, iteration: int) -> float | None:
        return (self.evals.get(iteration) or {}).get(key)

    def final(self, key: str) -> float | None:
        return self.value(key, self.last_iteration) if self.evals else None


def load_run(path: str | Path, iters: int, failed: bool = False) -> RunData:
    """Read ``metrics.json`` / ``config.json`` of one run folder (any state)."""
    path = Path(path)
    metrics = _read_json(path / METRICS)
    evals_raw = (metrics or {}).get("evals") or []
    if not evals_raw:
        return RunData("failed" if failed else "missing", {}, config=_read_json(path / CONFIG))
    evals: dict[int, dict[str, float | None]] = {}
    for e in sorted(evals_raw, key=lambda e: e.get("iteration", 0)):
        evals[int(e["iteration"])] = {k: _num(e.get(k)) for k in EVAL_VALUES}
    last = max(evals)
    finished = _completed(path, metrics, last, iters)
    rss = [e.get("peak_rss_bytes") for e in evals_raw if e.get("peak_rss_bytes") is not None]
    cuda = [e.get("peak_cuda_bytes") for e in evals_raw if e.get("peak_cuda_bytes") is not None]
    state = "finished" if finished else ("failed" if failed else "partial")
    machines = {int(e["iteration"]): str(e["machine"]) for e in evals_raw if e.get("machine")}
    return RunData(state, evals, last, max(rss) if rss else None, max(cuda) if cuda else None,
                   _on_bound(evals_raw), metrics.get("config") or _read_json(path / CONFIG),
                   metrics.get("backend"), metrics.get("n_gaussians"), machines)


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _on_bound(evals_raw: list[dict[str, Any]]) -> dict[str, float]:
    """Per-parameter fraction of steps on the TR bound over the run: the per-eval-interval
    fractions (``on_bound_fraction``, reset at each eval) weighted by the interval's iterations."""
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    previous = 0
    for e in sorted(evals_raw, key=lambda e: e.get("iteration", 0)):
        it = int(e.get("iteration", 0))
        span = max(it - previous, 0)
        previous = it
        for name, frac in (e.get("on_bound_fraction") or {}).items():
            if _num(frac) is None:
                continue
            sums[name] = sums.get(name, 0.0) + span * float(frac)
            weights[name] = weights.get(name, 0.0) + span
    return {k: sums[k] / weights[k] for k in sums if weights[k] > 0}


def collect(spec: StudySpec, out_dir: str | Path) -> dict[str, dict[str, dict[int, RunData]]]:
    """``data[scene][variant][seed]`` for every run of the spec, plus the ``"average"`` pseudo-scene."""
    failures = _read_json(Path(out_dir) / FAILURES_FILE) or {}
    data: dict[str, dict[str, dict[int, RunData]]] = {}
    for scene in spec.scenes:
        data[scene] = {}
        for variant in spec.variants:
            data[scene][variant] = {
                seed: load_run(run_dir(out_dir, scene, variant, seed), spec.iters,
                               failed=f"{scene}/{variant}/seed{seed}" in failures)
                for seed in spec.seeds}
    data[AVERAGE] = {v: {s: _average_run([data[sc][v][s] for sc in spec.scenes], spec.eval_iterations())
                         for s in spec.seeds} for v in spec.variants}
    return data


def _average_run(runs: list[RunData], iterations: list[int]) -> RunData:
    """The per-seed scene average: a value exists where every scene has it."""
    evals: dict[int, dict[str, float | None]] = {}
    for it in iterations:
        row: dict[str, float | None] = {}
        for key in EVAL_VALUES:
            vals = [r.value(key, it) for r in runs]
            row[key] = _mean(vals) if all(v is not None for v in vals) else None
        if any(v is not None for v in row.values()):
            evals[it] = row
    finished = all(r.finished for r in runs)
    state = "finished" if finished else ("partial" if evals else "missing")

    def avg(values):
        return _mean(values) if values and all(v is not None for v in values) else None

    names = set().union(*(r.on_bound_fraction for r in runs)) if runs else set()
    bound = {n: _mean([r.on_bound_fraction[n] for r in runs]) for n in sorted(names)
             if all(n in r.on_bound_fraction for r in runs)}
    machines = {}  # per iteration: the scenes' labels, joined when they differ
    for it in iterations:
        labels = sorted({r.machines[it] for r in runs if it in r.machines})
        if labels:
            machines[it] = " | ".join(labels)
    return RunData(state, evals, max(evals) if evals else 0,
                   avg([r.peak_rss_bytes for r in runs]), avg([r.peak_cuda_bytes for r in runs]), bound,
                   machines=machines)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` over the non-null values; std is the sample std (null for n < 2)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": _mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def _curve(runs: dict[int, RunData], key: str, iterations: list[int],
           seeds: list[int] | None = None) -> dict[str, list]:
    seeds = list(runs) if seeds is None else seeds
    stats = [mean_std(runs[s].value(key, it) for s in seeds) for it in iterations]
    return {"mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats], "n": [s["n"] for s in stats]}


def _finished_seeds(*groups: dict[int, RunData]) -> list[int]:
    seeds = None
    for runs in groups:
        done = {s for s, r in runs.items() if r.finished}
        seeds = done if seeds is None else seeds & done
    return sorted(seeds or [])


def _mean_at(runs: dict[int, RunData], seeds: list[int], key: str, it: int) -> float | None:
    vals = [runs[s].value(key, it) for s in seeds]
    return _mean(vals) if vals and all(v is not None for v in vals) else None


def quality_gap(var: dict[int, RunData], ref: dict[int, RunData], iterations: list[int],
                reference: str, metrics: Iterable[str] = QUALITY) -> dict[str, Any] | None:
    """``var − ref`` per metric and eval iteration over the seeds where both finished (paired)."""
    seeds = _finished_seeds(var, ref)
    if not seeds:
        return None
    out: dict[str, Any] = {"reference": reference, "seeds": seeds, "iterations": list(iterations)}
    for key in metrics:
        means, stds = [], []
        for it in iterations:
            diffs = [None if var[s].value(key, it) is None or ref[s].value(key, it) is None
                     else var[s].value(key, it) - ref[s].value(key, it) for s in seeds]
            st = mean_std(diffs) if all(d is not None for d in diffs) else {"mean": None, "std": None}
            means.append(st["mean"])
            stds.append(st["std"])
        out[key] = means
        out[f"{key}_std"] = stds
    return out


def _reach(var: dict[int, RunData], ref: dict[int, RunData], iterations: list[int], iters: int):
    """(seeds, target PSNR, first eval iteration where var's mean PSNR >= target or None)."""
    seeds = _finished_seeds(var, ref)
    if not seeds:
        return None
    target = _mean_at(ref, seeds, "psnr", iters)
    if target is None:
        return None
    for it in iterations:
        p = _mean_at(var, seeds, "psnr", it)
        if p is not None and p >= target:
            return seeds, target, it
    return seeds, target, None


def iteration_ratio(var, ref, iterations: list[int], iters: int, reference: str) -> dict[str, Any] | None:
    reach = _reach(var, ref, iterations, iters)
    if reach is None:
        return None
    seeds, target, it = reach
    return {"value": None if it is None else it / iters, "iteration": it, "target_psnr": target,
            "reference": reference, "reference_iteration": iters, "seeds": seeds}


def time_ratio(var, ref, iterations: list[int], iters: int, reference: str) -> dict[str, Any] | None:
    """First-eval rule: train seconds of ``var`` at the first eval reaching the target (mean over
    seeds), over the reference's total train seconds (mean over the same seeds)."""
    reach = _reach(var, ref, iterations, iters)
    if reach is None:
        return None
    seeds, target, it = reach
    ref_total = _mean_at(ref, seeds, "train_seconds", iters)
    seconds = None if it is None else _mean_at(var, seeds, "train_seconds", it)
    machines = sorted(_machines(ref, seeds, iters) | (_machines(var, seeds, it) if it is not None else set()))
    if machines == [UNKNOWN_MACHINE]:  # no run recorded one (runs from before the label): as before
        machines = []
    value = None if seconds is None or not ref_total or len(machines) > 1 else seconds / ref_total
    return {"value": value, "rule": "first-eval", "iteration": it, "seconds": seconds,
            "reference_seconds": ref_total, "target_psnr": target, "reference": reference, "seeds": seeds,
            "machines": machines}


def _machines(runs, seeds: list[int], upto: int) -> set[str]:
    """Machine labels of the evals up to ``upto`` of these seeds' runs; ``UNKNOWN_MACHINE`` for an
    eval that recorded none (runs from before the label existed)."""
    return {runs[s].machines.get(it, UNKNOWN_MACHINE) for s in seeds for it in runs[s].evals if it <= upto}


def memory_ratio(var, ref, reference: str) -> dict[str, Any] | None:
    seeds = _finished_seeds(var, ref)
    if not seeds:
        return None
    out: dict[str, Any] = {"reference": reference, "seeds": seeds}
    for key, attr in (("rss", "peak_rss_bytes"), ("cuda", "peak_cuda_bytes")):
        a = [getattr(var[s], attr) for s in seeds]
        b = [getattr(ref[s], attr) for s in seeds]
        ok = all(x is not None for x in a + b) and _mean(b) > 0
        out[key] = _mean(a) / _mean(b) if ok else None
    return out


def curvature_partner(spec: StudySpec, variant: str) -> str | None:
    """The ``curvature: none`` variant whose meta equals ``variant``'s otherwise."""
    meta = spec.variants[variant].meta
    if meta.get("optimizer") != "tr" or meta.get("curvature") in (None, "none"):
        return None
    want = {k: v for k, v in meta.items() if k not in ("curvature", "description")}
    for name, v in spec.variants.items():
        other = {k: x for k, x in v.meta.items() if k not in ("curvature", "description")}
        if name != variant and v.meta.get("curvature") == "none" and other == want:
            return name
    return None


def curvature_gain(var, base, iterations: list[int], baseline: str) -> dict[str, Any] | None:
    gap = quality_gap(var, base, iterations, baseline, metrics=("psnr",))
    if gap is None:
        return None
    return {"baseline": baseline, "seeds": gap["seeds"], "iterations": gap["iterations"],
            "psnr": gap["psnr"], "psnr_std": gap["psnr_std"]}


def _variant_summary(spec: StudySpec, variant: str, runs: dict[int, RunData], iterations) -> dict[str, Any]:
    done = [s for s in spec.seeds if runs[s].finished]
    states = {str(s): (r.state if r.state != "partial" else f"partial@{r.last_iteration}") for s, r in runs.items()}
    out: dict[str, Any] = {"meta": spec.variants[variant].meta, "overrides": spec.variants[variant].overrides,
                           "runs": states, "finished_seeds": done, "iterations": list(iterations)}
    for key in EVAL_VALUES:
        out[key] = _curve(runs, key, iterations)
    out["final"] = {key: mean_std(runs[s].value(key, spec.iters) for s in done) for key in QUALITY}
    out["seconds_per_iteration_final"] = mean_std(runs[s].value("seconds_per_iteration", spec.iters) for s in done)
    out["total_train_seconds"] = mean_std(runs[s].value("train_seconds", spec.iters) for s in done)
    out["peak_rss_bytes"] = mean_std(runs[s].peak_rss_bytes for s in done)
    out["peak_cuda_bytes"] = mean_std(runs[s].peak_cuda_bytes for s in done)
    names = sorted(set().union(*(runs[s].on_bound_fraction for s in done))) if done else []
    out["on_bound_fraction"] = {n: mean_std(runs[s].on_bound_fraction.get(n) for s in done) for n in names}
    return out


def _scene_results(spec: StudySpec, runs_by_variant: dict[str, dict[int, RunData]]) -> dict[str, Any]:
    its = spec.eval_iterations()
    ref_name = spec.reference
    ref = runs_by_variant[ref_name]
    res: dict[str, Any] = {"variants": {v: _variant_summary(spec, v, runs_by_variant[v], its) for v in spec.variants}}
    others = [v for v in spec.variants if v != ref_name]
    res["quality_gap"] = {v: quality_gap(runs_by_variant[v], ref, its, ref_name) for v in others}
    res["iteration_ratio"] = {v: iteration_ratio(runs_by_variant[v], ref, its, spec.iters, ref_name) for v in others}
    res["time_ratio"] = {v: time_ratio(runs_by_variant[v], ref, its, spec.iters, ref_name) for v in others}
    res["memory_ratio"] = {v: memory_ratio(runs_by_variant[v], ref, ref_name) for v in others}
    gains = {}
    for v in spec.variants:
        partner = curvature_partner(spec, v)
        if partner is not None:
            gains[v] = curvature_gain(runs_by_variant[v], runs_by_variant[partner], its, partner)
    res["curvature_gain"] = gains
    return res


def _scene_identity(spec: StudySpec, scene: str, data_path: Any) -> str:
    """What names a run's dataset: its path, or, for a scene the study generates, the path's last two
    parts (``scenes/<name>``), so a reference run copied from another study that generated the same
    scene under its own folder counts as the same data."""
    if spec.scenes[scene].generate is not None and data_path:
        return "/".join(Path(str(data_path)).parts[-2:])
    return str(data_path)


def init_consistency(spec: StudySpec, data) -> list[str]:
    """Problems: runs of one (scene, seed) whose stored init options differ between variants."""
    problems = []
    for scene in spec.scenes:
        for seed in spec.seeds:
            seen: dict[str, tuple] = {}
            for variant in spec.variants:
                cfg = data[scene][variant][seed].config
                if not cfg:
                    continue
                seen[variant] = (_scene_identity(spec, scene, cfg.get("data")),) + tuple(
                    (k, json.dumps(cfg.get(k), sort_keys=True)) for k in ("seed",) + INIT_KEYS + EVAL_KEYS)
            if len(set(seen.values())) > 1:
                problems.append(f"{scene} seed {seed}: the variants were initialised or evaluated with "
                                f"different options ({', '.join(sorted(seen))})")
    return problems


def aggregate(spec: StudySpec, out_dir: str | Path, *, command: str = "", plots: bool = True,
              log: Callable[[str], None] = _print) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and ``plots/*.png`` from the run folders."""
    out_dir = Path(out_dir)
    data = collect(spec, out_dir)
    states = {"finished": 0, "partial": 0, "missing": 0, "failed": 0}
    runs = []
    failures = _read_json(out_dir / FAILURES_FILE) or {}
    for seed in spec.seeds:
        for scene in spec.scenes:
            for variant in spec.variants:
                r = data[scene][variant][seed]
                states[r.state] += 1
                entry = {"scene": scene, "variant": variant, "seed": seed, "state": r.state,
                         "last_iteration": r.last_iteration,
                         "path": str(run_dir(out_dir, scene, variant, seed).relative_to(out_dir))}
                key = f"{scene}/{variant}/seed{seed}"
                if key in failures:
                    entry["error"] = failures[key].get("error")
                if r.backend:
                    entry["backend"] = r.backend
                if r.n_gaussians is not None:
                    entry["n_gaussians"] = r.n_gaussians
                runs.append(entry)
    results: dict[str, Any] = {
        "study": spec.to_dict(),
        "generated": _now(),
        "command": command,
        "aggregated_on": machine_info(),
        "invocations": _read_json(out_dir / INVOCATIONS_FILE) or [],
        "eval_iterations": spec.eval_iterations(),
        "table_iterations": spec.table_iterations(),
        "half_iteration": spec.half_iteration(),
        "run_states": states,
        "runs": runs,
        "init_consistency_problems": init_consistency(spec, data),
        "scenes": {scene: _scene_results(spec, data[scene]) for scene in spec.scenes},
        AVERAGE: _scene_results(spec, data[AVERAGE]),
    }
    results["verdicts"] = verdicts(spec, results, data)
    write_json(out_dir / RESULTS_JSON, results)
    with atomic_write(out_dir / RESULTS_MD) as tmp:
        tmp.write_text(format_markdown(spec, results))
    if plots:
        from trsplat.bench import plots as plots_mod

        results["plots"] = plots_mod.write_plots(spec, results, out_dir / "plots")
        write_json(out_dir / RESULTS_JSON, results)
        with atomic_write(out_dir / RESULTS_MD) as tmp:
            tmp.write_text(format_markdown(spec, results))
    log(f"wrote {out_dir / RESULTS_JSON}, {out_dir / RESULTS_MD}"
        + (f" and {len(results.get('plots', []))} plots" if plots else ""))
    return results


# =================================================================================================
# Verdicts and markdown
# =================================================================================================
def _scene_items(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    items = list(results["scenes"].items())
    if len(items) > 1:
        items.append((AVERAGE, results[AVERAGE]))
    return items


def verdicts(spec: StudySpec, results: dict[str, Any], data) -> list[dict[str, Any]]:
    """Statements checked against the numbers: finished runs, over the seeds where both compared
    variants finished; "holds" compares seed means (no significance test)."""
    out = []
    ref = spec.reference
    T, half = spec.iters, spec.half_iteration()
    its = spec.eval_iterations()
    for scene, res in _scene_items(results):
        runs = data[scene]
        for v in spec.variants:
            if v == ref:
                continue
            gap = res["quality_gap"].get(v)
            if gap is None:
                out.append({"kind": "missing", "scene": scene, "variant": v, "claim": f"{v} vs {ref}", "holds": None,
                            "text": f"{scene}: {v} vs {ref}: not computable yet (no seed where both finished)"})
                continue
            seeds = gap["seeds"]
            # v@T/2 >= ref@T on each quality metric (the paper's "50 % fewer iterations")
            parts, holds_all = [], True
            for key in QUALITY:
                a = _mean_at(runs[v], seeds, key, half)
                b = _mean_at(runs[ref], seeds, key, T)
                if a is None or b is None:
                    continue
                ok = a <= b if key in LOWER_IS_BETTER else a >= b
                holds_all = holds_all and ok
                parts.append(f"{key.upper()} {'holds' if ok else 'does not hold'} "
                             f"({_fmt_num(a, key)} vs {_fmt_num(b, key)})")
            if parts:
                out.append({"kind": "half", "scene": scene, "variant": v, "claim": f"{v}@{half} >= {ref}@{T}",
                            "holds": holds_all,
                            "text": f"{scene}: {v}@{half} ≥ {ref}@{T} (n={len(seeds)}): " + "; ".join(parts)})
            k = its.index(T)
            d, sd = gap["psnr"][k], gap["psnr_std"][k]
            if d is not None:
                out.append({"kind": "final", "scene": scene, "variant": v, "claim": f"{v}@{T} > {ref}@{T} (PSNR)",
                            "holds": d > 0,
                            "text": f"{scene}: {v}@{T} − {ref}@{T} = {d:+.2f} dB PSNR"
                                    + (f" (paired std {sd:.2f} over {len(seeds)} seeds)" if sd is not None
                                       else " (1 seed)")})
            ir = res["iteration_ratio"].get(v)
            if ir is not None:
                if ir["value"] is None:
                    text = (f"{scene}: {v} never reaches {ref}'s final PSNR {ir['target_psnr']:.2f} within {T} "
                            f"iterations: iteration_ratio ≤ 0.5 does not hold")
                else:
                    text = (f"{scene}: {v} reaches {ref}'s final PSNR {ir['target_psnr']:.2f} at iteration "
                            f"{ir['iteration']} (iteration_ratio {ir['value']:.2f}): iteration_ratio ≤ 0.5 "
                            f"{'holds' if ir['value'] <= 0.5 else 'does not hold'}")
                tr_ = res["time_ratio"].get(v)
                if tr_ is not None and tr_["value"] is not None:
                    text += (f"; it needs {tr_['value']:.2f}× {ref}'s total train seconds "
                             f"(time_ratio, first-eval rule)")
                elif tr_ is not None and len(tr_.get("machines") or ()) > 1:
                    text += f"; no time_ratio: the runs' train seconds come from {', '.join(tr_['machines'])}"
                out.append({"kind": "iteration_ratio", "scene": scene, "variant": v, "claim": "iteration_ratio <= 0.5",
                            "holds": ir["value"] is not None and ir["value"] <= 0.5, "text": text})
            mr = res["memory_ratio"].get(v)
            if mr is not None and mr.get("rss") is not None:
                text = f"{scene}: peak memory {v} / {ref}: RSS {mr['rss']:.2f}×"
                if mr.get("cuda") is not None:
                    text += f", CUDA {mr['cuda']:.2f}×"
                out.append({"kind": "memory", "scene": scene, "variant": v, "claim": "memory_ratio", "holds": None,
                            "text": text})
        for v, g in res["curvature_gain"].items():
            if g is None:
                continue
            d, sd = g["psnr"][its.index(T)], g["psnr_std"][its.index(T)]
            if d is None:
                continue
            out.append({"kind": "curvature", "scene": scene, "variant": v, "claim": f"{v} > {g['baseline']} (PSNR@{T})",
                        "holds": d > 0,
                        "text": f"{scene}: curvature helps ({v} vs {g['baseline']}) at {T}: "
                                f"{'holds' if d > 0 else 'does not hold'} ({d:+.2f} dB PSNR"
                                + (f", paired std {sd:.2f}" if sd is not None else "") + ")"})
    return out


def _fmt_num(x: float | None, key: str) -> str:
    if x is None:
        return "—"
    if key == "psnr":
        return f"{x:.2f}"
    if key in ("ssim",) or key in LOWER_IS_BETTER:
        return f"{x:.3f}"
    return f"{x:.3g}"


def _cell(stat: dict[str, Any] | None, key: str, expected: int, *, scale: float = 1.0,
          digits: str | None = None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    fmt = (lambda x: f"{x:{digits}}") if digits else (lambda x: _fmt_num(x, key))
    text = fmt(stat["mean"] / scale)
    if stat.get("std") is not None:
        text += f" ± {fmt(stat['std'] / scale)}"
    if stat.get("n", expected) < expected:
        text += f" ({stat['n']}/{expected})"
    return text


def _curve_stat(summary: dict[str, Any], key: str, it: int) -> dict[str, Any]:
    k = summary["iterations"].index(it)
    c = summary[key]
    return {"mean": c["mean"][k], "std": c["std"][k], "n": c["n"][k]}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def format_markdown(spec: StudySpec, results: dict[str, Any]) -> str:
    n_seeds = len(spec.seeds)
    ref, T, half = spec.reference, spec.iters, spec.half_iteration()
    its, table_its = spec.eval_iterations(), spec.table_iterations()
    items = _scene_items(results)
    any_cuda = any(s["variants"][v]["peak_cuda_bytes"]["mean"] is not None for _, s in items for v in spec.variants)
    L: list[str] = [f"# Optimizer study: {spec.name}", ""]
    L.append(f"Generated {results['generated']} by `{results['command'] or 'trsplat bench optimizers'}`.")
    L.append("")
    st = results["run_states"]
    total = sum(st.values())
    L.append(f"Runs: {st['finished']}/{total} finished, {st['partial']} partial, {st['missing']} missing, "
             f"{st['failed']} failed. {len(spec.variants)} variants × {len(spec.scenes)} scenes × "
             f"{n_seeds} seeds ({', '.join(map(str, spec.seeds))}), {T} iterations, no densification, "
             f"identical initialisation per (scene, seed); test-view evaluation at {', '.join(map(str, its))}.")
    L.append("")
    L.append("Cells are mean ± sample std over seeds; `(k/n)` marks a value over fewer seeds than planned "
             "(unfinished runs). Derived figures and verdicts use finished runs only, over the seeds where "
             f"both compared variants finished. Reference: `{ref}`.")
    for p in results.get("init_consistency_problems") or []:
        L.append(f"\n**Warning**: {p}")
    # ---- provenance
    L += ["", "## Setup", ""]
    invs = results.get("invocations") or []
    commands = sorted({i.get("command", "") for i in invs if i.get("command")})
    if commands:
        L.append("Runs executed by:")
        L += [f"- `{c}`" for c in commands]
    else:
        L.append("Runs executed by: no record in invocations.json (runs made outside this command).")
    machines = []
    for i in invs:
        m = i.get("machine") or {}
        desc = _machine_text(m) + (f"; {i.get('jobs', 1)} run(s) at a time, "
                                   f"{i.get('threads') or 'default'} threads each" if m else "")
        if desc and desc not in machines:
            machines.append(desc)
    if machines:
        L.append("")
        L.append("Machine(s) that ran the trainings:")
        L += [f"- {m}" for m in machines]
    L.append("")
    L.append(f"Aggregated on: {_machine_text(results['aggregated_on'])}.")
    backends = sorted({r.get('backend') for r in results['runs'] if r.get('backend')})
    if backends:
        L.append(f"Compositing backend(s): {', '.join(backends)}.")
    L += ["", "Data:", ""]
    rows = []
    for name, s in spec.scenes.items():
        n_g = sorted({r["n_gaussians"] for r in results["runs"] if r["scene"] == name and "n_gaussians" in r})
        opts = ", ".join(f"{k}={v}" for k, v in s.options.items()) or "defaults"
        gen = f" (generated: {', '.join(f'{k}={v}' for k, v in s.generate.items())})" if s.generate else ""
        rows.append([name, f"`{s.path}`{gen}", opts, ", ".join(map(str, n_g)) or "—"])
    L += _table(["scene", "path", "options", "initial Gaussians"], rows)
    if spec.common:
        L.append("")
        L.append("Options common to all runs: " + ", ".join(f"`{k}={v}`" for k, v in spec.common.items()) + ".")
    L += ["", "Variants:", ""]
    L += _table(["variant", "what", "options"],
                [[v, ", ".join(f"{k}={x}" for k, x in s.meta.items()),
                  ", ".join(f"`{k}={x}`" for k, x in s.overrides.items())] for v, s in spec.variants.items()])
    # ---- at a glance
    L += ["", "## At a glance", ""]
    rows = []
    for scene, res in items:
        row = [scene]
        for key, it in (("psnr", T), ("ssim", T), ("lpips", T), ("psnr", half)):
            best = _best(res, spec, key, it)
            row.append(best)
        rows.append(row)
    L += _table(["scene", f"best PSNR@{T}", f"best SSIM@{T}", f"best LPIPS@{T}", f"best PSNR@{half}"], rows)
    L += ["", "Best = highest seed mean (lowest for LPIPS) among variants with all seeds evaluated at that "
          "iteration; plots in `plots/`."]
    # ---- verdicts
    L += ["", "## Verdicts", "", "Generated from the numbers below; \"holds\" compares seed means only "
          "(no significance test)."]
    L.append("")
    groups = (("half", f"Same quality in half the iterations: variant@{half} ≥ {ref}@{T} (the paper's claim)"),
              ("iteration_ratio", f"Iterations (and train time) to reach {ref}'s final PSNR"),
              ("final", f"Final PSNR against {ref}"),
              ("curvature", "Does the curvature estimate help? (against the same variant with --curvature none)"),
              ("memory", f"Peak memory against {ref}"),
              ("missing", "Not computable yet"))
    if not results["verdicts"]:
        L.append("- nothing to compare yet.")
    for kind, title in groups:
        chosen = [v for v in results["verdicts"] if v.get("kind") == kind]
        if chosen:
            L += ["", f"**{title}**", ""]
            L += [f"- {v['text']}" for v in chosen]
    # ---- Table 1 layout
    mem_key = "peak_cuda_bytes" if any_cuda else "peak_rss_bytes"
    L += ["", f"## Table 1 layout (@{'/'.join(map(str, table_its))})", ""]
    rows = []
    for scene, res in items:
        for v in spec.variants:
            s = res["variants"][v]
            cells = [" / ".join(_cell(_curve_stat(s, key, it), key, n_seeds) for it in table_its) for key in QUALITY]
            rows.append([scene, v, *cells, _cell(s["total_train_seconds"], "", n_seeds, digits=".1f"),
                         _cell(s[mem_key], "", n_seeds, scale=2**20, digits=".0f")])
    L += _table(["Scene", "Method", "SSIM ↑", "PSNR ↑", "LPIPS ↓", "Time (s)",
                 f"Mem ({'CUDA' if any_cuda else 'RSS'}, MiB)"],
                [[r[0], r[1], r[3], r[2], r[4], r[5], r[6]] for r in rows])
    # ---- per eval iteration
    for key, title in (("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓ (3DGS convention)")):
        L += ["", f"## Test {title} at each eval iteration", ""]
        for scene, res in items:
            L += [f"**{scene}**", ""]
            L += _table(["variant"] + [str(i) for i in its],
                        [[v] + [_cell(_curve_stat(res["variants"][v], key, it), key, n_seeds) for it in its]
                         for v in spec.variants])
            L.append("")
    # ---- cost
    L += ["## Cost per variant", "",
          "Finished runs; seconds exclude evaluation. Peak RSS is the training process's peak resident memory "
          "(includes Python/torch and the evaluation, LPIPS network included when on), so it understates "
          "the optimiser's own relative overhead.", ""]
    for scene, res in items:
        L += [f"**{scene}**", ""]
        header = ["variant", "s / iteration", "total train s", "peak RSS MiB"] + (["peak CUDA MiB"] if any_cuda else [])
        rows = []
        for v in spec.variants:
            s = res["variants"][v]
            row = [v, _cell(s["seconds_per_iteration_final"], "", n_seeds, digits=".4f"),
                   _cell(s["total_train_seconds"], "", n_seeds, digits=".1f"),
                   _cell(s["peak_rss_bytes"], "", n_seeds, scale=2**20, digits=".0f")]
            if any_cuda:
                row.append(_cell(s["peak_cuda_bytes"], "", n_seeds, scale=2**20, digits=".0f"))
            rows.append(row)
        L += _table(header, rows)
        L.append("")
    # ---- on-bound fractions
    L += ["## Steps on the trust-region bound", "",
          "Fraction of non-zero proposed steps clipped to the Hellinger radius, per parameter type, over the "
          "whole run (per-eval-interval fractions weighted by the interval's iterations), finished runs.", ""]
    for scene, res in items:
        tr_vs = [v for v in spec.variants if res["variants"][v]["on_bound_fraction"]]
        if not tr_vs:
            continue
        names = sorted(set().union(*(res["variants"][v]["on_bound_fraction"] for v in tr_vs)))
        L += [f"**{scene}**", ""]
        L += _table(["variant"] + names,
                    [[v] + [_cell(res["variants"][v]["on_bound_fraction"].get(n), "", n_seeds, digits=".3f")
                            for n in names] for v in tr_vs])
        L.append("")
    # ---- derived figures
    L += ["## Derived figures", "",
          f"vs `{ref}`; iteration_ratio = first eval iteration at which the variant's mean PSNR reaches "
          f"{ref}'s final mean PSNR, / {T} (paper claim ≤ 0.5; — never reached); time_ratio = the variant's "
          f"train seconds at that eval (first-eval rule, no interpolation) / {ref}'s total; memory_ratio = peak "
          f"RSS{' (CUDA)' if any_cuda else ''} / {ref}'s; ΔPSNR = paired difference of seed means.", ""]
    for scene, res in items:
        L += [f"**{scene}**", ""]
        rows = []
        for v in spec.variants:
            if v == ref:
                continue
            ir, tr_, mr, gap = (res[k].get(v) for k in ("iteration_ratio", "time_ratio", "memory_ratio", "quality_gap"))
            if gap is None:
                rows.append([v, "not finished", "", "", "", "", ""])
                continue
            rows.append([
                v,
                _ratio(ir), _ratio(tr_),
                (f"{mr['rss']:.2f}" if mr and mr.get("rss") is not None else "—")
                + (f" ({mr['cuda']:.2f})" if mr and mr.get("cuda") is not None else ""),
                _gap(gap, "psnr", its.index(half)), _gap(gap, "psnr", its.index(T)),
                f"{_gap(gap, 'ssim', its.index(T), '.3f')} / {_gap(gap, 'lpips', its.index(T), '.3f')}",
            ])
        L += _table(["variant", "iteration_ratio", "time_ratio", "memory_ratio", f"ΔPSNR@{half}",
                     f"ΔPSNR@{T}", f"ΔSSIM / ΔLPIPS @{T}"], rows)
        L.append("")
    gains = [(scene, v, g) for scene, res in items for v, g in res["curvature_gain"].items()]
    if gains:
        L += ["## Curvature gain", "", "PSNR of each curvature estimator minus the same variant with "
              "`--curvature none` (paired over seeds), at each eval iteration.", ""]
        rows = []
        for scene, v, g in gains:
            if g is None:
                rows.append([scene, v, "—"] + ["—"] * len(its))
                continue
            rows.append([scene, v, g["baseline"]] + [_gap(g, "psnr", k) for k in range(len(its))])
        L += _table(["scene", "variant", "vs"] + [str(i) for i in its], rows)
        L.append("")
    # ---- run states
    bad = [r for r in results["runs"] if r["state"] != "finished"]
    L += ["## Runs not finished", ""]
    if bad:
        L += [f"- `{r['path']}`: {r['state']}" + (f" at iteration {r['last_iteration']}" if r["last_iteration"] else "")
              + (f" — {' '.join(str(r['error']).split())[:200]}" if r.get("error") else "") for r in bad]
    else:
        L.append("- none: every planned run finished.")
    if results.get("plots"):
        L += ["", "## Plots", ""]
        L += [f"- [`{p}`]({p})" for p in results["plots"]]
    return "\n".join(L) + "\n"


def _best(res: dict[str, Any], spec: StudySpec, key: str, it: int) -> str:
    n = len(spec.seeds)
    cands = []
    for v in spec.variants:
        st = _curve_stat(res["variants"][v], key, it)
        if st["mean"] is not None and st["n"] == n:
            cands.append((st["mean"], v))
    if not cands:
        return "—"
    mean, v = (min if key in LOWER_IS_BETTER else max)(cands)
    return f"{v} ({_fmt_num(mean, key)})"


def _ratio(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "—"
    if entry.get("iteration") is None:
        return "never"
    if len(entry.get("machines") or ()) > 1:
        return f"— (@{entry['iteration']}; other machines)"
    if entry["value"] is None:
        return "—"
    return f"{entry['value']:.2f} (@{entry['iteration']})"


def _gap(gap: dict[str, Any], key: str, k: int, digits: str = "+.2f") -> str:
    m = gap[key][k]
    if m is None:
        return "—"
    s = gap[f"{key}_std"][k]
    fmt = digits if digits.startswith("+") else "+" + digits
    return f"{m:{fmt}}" + (f" ± {s:{digits.lstrip('+')}}" if s is not None else "")


# =================================================================================================
# Machine, provenance, command line
# =================================================================================================
def machine_info() -> dict[str, Any]:
    """CPU model, cores, memory, platform and library versions (cheap: no kernel compile)."""
    info: dict[str, Any] = {"host": platform.node(), "cpu_model": cpu_model(), "cores": usable_cores(),
                            "memory_bytes": memory_bytes(),
                            "platform": platform.platform(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:
        pass
    return info


def _machine_text(m: dict[str, Any]) -> str:
    if not m:
        return ""
    text = f"{m.get('cpu_model') or 'unknown CPU'}, {m.get('cores')} cores"
    if m.get("memory_bytes"):
        text += f", {m['memory_bytes'] / 2**30:.0f} GiB RAM"
    if m.get("gpu"):
        text += f", GPU {m['gpu']}"
    text += f" ({m.get('host', '?')}; {m.get('platform', '')}; Python {m.get('python')}, torch {m.get('torch')})"
    return text


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    return [x.strip() for x in text.split(",") if x.strip()]


def _seeds(text: str | None) -> list[int] | None:
    """``--seeds`` as a list of ints (None when not given)."""
    if text is None:
        return None
    try:
        seeds = [int(s) for s in _csv(text) or []]
    except ValueError:
        seeds = []
    if not seeds:
        raise TrsplatError(f"--seeds {text!r}: expected comma-separated integers")
    return seeds


def _parse_set(items: list[str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise TrsplatError(f"--set {item!r}: expected KEY=VALUE")
        key, value = item.split("=", 1)
        key = key.strip().replace("-", "_")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _command_from_args(args: argparse.Namespace) -> str:
    parts = ["trsplat", "bench", "optimizers", "--out", str(args.out)]
    for flag, value in (("--preset", args.preset), ("--spec", args.spec), ("--iters", args.iters),
                        ("--seeds", args.seeds), ("--scenes", args.scenes), ("--variants", args.variants),
                        ("--eval-fraction", args.eval_fraction), ("--data-root", args.data_root)):
        if value is not None:
            parts += [flag, str(value)]
    for item in args.set or []:
        parts += ["--set", item]
    if args.jobs != 1:
        parts += ["--jobs", str(args.jobs)]
    if args.threads is not None:
        parts += ["--threads", str(args.threads)]
    if not args.isolate:
        parts.append("--no-isolate")
    if args.only_aggregate:
        parts.append("--only-aggregate")
    if not args.plots:
        parts.append("--no-plots")
    return shlex.join(parts)


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    """The full study (preset/spec/``OUT/study.json`` with --iters/--seeds/--set applied).

    ``--seeds`` names the seeds to run now; seeds the study does not have yet are added to it, so
    running one seed at a time never shrinks the study (or its report) to that seed.
    """
    out = Path(args.out)
    if args.preset is None and args.spec is None and (out / STUDY_FILE).is_file():
        spec = StudySpec.from_dict(_read_json(out / STUDY_FILE), source=str(out / STUDY_FILE),
                                   data_root=args.data_root)
    else:
        spec = load_spec(preset=args.preset, spec_file=args.spec, data_root=args.data_root)
    if args.iters is not None:
        spec.iters = int(args.iters)
    spec.seeds += [s for s in _seeds(args.seeds) or [] if s not in spec.seeds]
    if args.eval_fraction is not None:
        spec.eval_fraction = float(args.eval_fraction)
    extra = _parse_set(args.set)
    if extra:
        _check_overrides(extra, "--set", forbidden=RUN_KEYS)
        spec.common.update(extra)
    spec.validate()
    return spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trsplat bench optimizers``."""
    parser.add_argument("--out", required=True, help="study folder (runs/, results.json, results.md, plots/)")
    parser.add_argument("--preset", default=None, choices=sorted(PRESETS),
                        help="named study (default: OUT/study.json when present, else paper-study)")
    parser.add_argument("--spec", default=None, metavar="FILE.json",
                        help="study spec as JSON (see docs/optimizer_study.md)")
    parser.add_argument("--iters", type=int, default=None, help="iterations per run (overrides the spec)")
    parser.add_argument("--seeds", default=None,
                        help="comma-separated seeds to run now (default: all); new ones join the study")
    parser.add_argument("--scenes", default=None, help="comma-separated scenes to run now (default: all)")
    parser.add_argument("--variants", default=None, help="comma-separated variants to run now (default: all)")
    parser.add_argument("--eval-fraction", type=float, default=None,
                        help="evaluate every this fraction of the run (spec default 0.1)")
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help="TrainConfig option for every run, e.g. --set backend=cpu (repeatable)")
    parser.add_argument("--data-root", default=None,
                        help=f"folder of the preset datasets (default: {DEFAULT_DATA_ROOT})")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch/numba threads per run (default: all cores with --jobs 1, else cores // jobs)")
    parser.add_argument("--no-isolate", dest="isolate", action="store_false",
                        help="train in this process (debugging; peak RSS becomes cumulative)")
    parser.add_argument("--only-aggregate", action="store_true",
                        help="do not train; rebuild results from the run folders")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the PNG plots")
    parser.add_argument("--show-spec", action="store_true", help="print the resolved study spec as JSON and exit")


def main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    spec = resolve_spec(args)
    if getattr(args, "show_spec", False):
        print(json.dumps(spec.to_dict(), indent=2))
        return 0
    command = _command_from_args(args)
    if args.jobs < 1:
        raise TrsplatError(f"--jobs must be >= 1, got {args.jobs}")
    selected = spec.select(_csv(args.scenes), _csv(args.variants), _seeds(args.seeds))
    status = 0
    if not args.only_aggregate:
        out.mkdir(parents=True, exist_ok=True)
        tasks = plan_runs(selected, out)          # validates every configuration first
        write_json(out / STUDY_FILE, spec.to_dict())
        n = {a: sum(t.action == a for t in tasks) for a in ("skip", "resume", "start")}
        _print(f"{len(tasks)} runs: {n['skip']} finished (skipped), {n['resume']} to resume, {n['start']} to start")
        if n["resume"] or n["start"]:
            needed = [sc for sc in selected.scenes if any(t.scene == sc and t.action != "skip" for t in tasks)]
            ensure_scenes(selected.select(scenes=needed), out)
            threads = args.threads
            if threads is None and args.jobs > 1:
                threads = max(1, (machine_info().get("cores") or 1) // args.jobs)
            invocations = _read_json(out / INVOCATIONS_FILE) or []
            invocations.append({"date": _now(), "command": command, "machine": machine_info(),
                                "jobs": args.jobs, "threads": threads, "isolate": args.isolate})
            write_json(out / INVOCATIONS_FILE, invocations)
            try:
                outcome = execute(tasks, out, jobs=args.jobs, threads=threads, isolate=args.isolate)
            except StudyInterrupted:
                print(f"study interrupted; run the same command again to resume:\n  {command}")
                aggregate(spec, out, command=command, plots=args.plots)
                return 130
            failed = [k for k, v in outcome.items() if v != "ok"]
            if failed:
                print(f"{len(failed)} run(s) failed: {', '.join(failed)} (see {out / FAILURES_FILE})")
                status = 1
    elif not (out / "runs").is_dir():
        raise TrsplatError(f"{out}: no runs/ folder to aggregate")
    aggregate(spec, out, command=command, plots=args.plots)
    return status


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))
    _p = argparse.ArgumentParser(prog="python -m trsplat.bench.optimizers", description=__doc__.split("\n\n")[0])
    add_arguments(_p)
    try:
        sys.exit(main(_p.parse_args()))
    except TrsplatError as _exc:
        print(f"trsplat: error: {_exc}", file=sys.stderr)
        sys.exit(2)
