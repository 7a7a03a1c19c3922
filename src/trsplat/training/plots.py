"""Training curves: the :class:`TrainingCurves` hook of every run, and ``trsplat compare``.

At each evaluation a run folder gets ``curves.png``: the training loss over iterations and over
train seconds, the number of Gaussians, test PSNR/SSIM/LPIPS over iterations and over train
seconds and, for the trust-region optimisers, the share of proposed steps clipped to the bound per
parameter (with ``--tr-radius adaptive`` also the radius factor κ and the ratio-test statistics);
with a densification strategy, what each refinement changed as a share of the Gaussians
(``metrics.json``'s ``densify`` records: relocated and added for MCMC, cloned, split and pruned for
ADC). The evaluations come from ``metrics.json``; the per-step series (loss, train PSNR,
train seconds, Gaussian count) from ``curves.json``, which the hook keeps in memory and writes
with every checkpoint, so a resumed run's curves start at iteration 1.

:func:`plot_runs` draws one run or several on shared axes and :func:`comparison_table` gives their
numbers as markdown (``trsplat compare``). Figures use :class:`matplotlib.figure.Figure` with the
Agg canvas (no pyplot state) and are written atomically by :func:`save_figure`, which the optimizer
study's plots use too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError, warn
from trsplat.io_utils import atomic_write
from trsplat.training.hooks import Hook
from trsplat.training.rundir import RunDir

if TYPE_CHECKING:
    from trsplat.training.trainer import Trainer

SERIES = ("iteration", "loss", "train_psnr", "train_seconds", "n_gaussians")
"""The per-step columns of ``curves.json`` (equal lengths, one entry per optimiser step)."""
CURVES_FORMAT = 1

CURVATURE_COLORS = {"hutchinson": "#d62728", "gnb": "#2ca02c", "none": "#9467bd"}
OTHER_COLORS = ["#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#1f77b4", "#aec7e8",
                "#ffbb78", "#98df8a", "#c5b0d5", "#c49c94"]
ADAM_TR_COLOR = "#1f77b4"
MAX_POINTS = 2000
"""Per-step series are thinned to about this many points per line (the figure is ~1000 px wide)."""


def optimizer_color(optimizer: str | None, curvature: str | None) -> str | None:
    """The study's colours: Adam black, ADAM-TR blue, 3DGS²-TR by curvature estimator."""
    if optimizer == "adam":
        return "black"
    if optimizer == "adam-tr":
        return ADAM_TR_COLOR
    if optimizer == "tr":
        return CURVATURE_COLORS.get(curvature or "")
    return None


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    """Write a :class:`matplotlib.figure.Figure` as PNG, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


# -- the data of one run ----------------------------------------------------------------------
def empty_steps() -> dict[str, list[float]]:
    return {name: [] for name in SERIES}


def _valid_steps(curves: Any) -> dict[str, list[float]] | None:
    """The ``steps`` columns of a ``curves.json`` dict, or None where they are malformed."""
    steps = curves.get("steps") if isinstance(curves, dict) else None
    if not isinstance(steps, dict) or not all(isinstance(steps.get(k), list) for k in SERIES):
        return None
    if len({len(steps[k]) for k in SERIES}) != 1:
        return None
    return {k: list(steps[k]) for k in SERIES}


def read_steps(run: RunDir) -> dict[str, list[float]]:
    """The run's per-step series (empty for runs without ``curves.json``; a broken one warns)."""
    try:
        curves = run.read_curves()
    except TrsplatError as exc:
        warn(f"{exc}; the loss curve starts afresh")
        return empty_steps()
    if curves is None:
        return empty_steps()
    steps = _valid_steps(curves)
    if steps is None:
        warn(f"{run.curves_path}: not a curves file of this trsplat; the loss curve starts afresh")
        return empty_steps()
    return steps


def truncate_steps(steps: dict[str, list[float]], last_iteration: int) -> dict[str, list[float]]:
    """Keep the steps up to ``last_iteration`` (a resumed run repeats the steps after its checkpoint)."""
    keep = sum(1 for it in steps["iteration"] if it <= last_iteration)
    return {k: v[:keep] for k, v in steps.items()}


@dataclass
class RunCurves:
    """What the plots of one run read: a label, the per-step series and the eval records."""

    label: str
    steps: dict[str, list[float]] = field(default_factory=empty_steps)
    evals: list[dict[str, Any]] = field(default_factory=list)
    optimizer: str = ""
    curvature: str = ""
    densify: str = ""
    n_gaussians: int | None = None
    finished: bool = False
    densify_events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def from_run(cls, path: str | Path, label: str | None = None) -> "RunCurves":
        """Read a run folder (``metrics.json``, ``curves.json`` where present, the config)."""
        run = RunDir(path)
        if not run.path.is_dir():
            raise TrsplatError(f"{run.path}: no such run folder")
        metrics = run.read_metrics()
        if metrics is None:
            raise TrsplatError(f"{run.path}: not a trsplat run folder (no {RunDir.METRICS})")
        if not isinstance(metrics, dict) or not isinstance(metrics.get("evals"), list):
            raise TrsplatError(f"{run.metrics_path}: not a metrics file of trsplat")
        cfg = TrainConfig.from_dict(metrics["config"]) if isinstance(metrics.get("config"), dict) \
            else run.read_config()
        return cls(label=label or run.path.name, steps=read_steps(run),
                   evals=sorted(metrics["evals"], key=lambda e: e.get("iteration", 0)),
                   optimizer=cfg.optim.optimizer, curvature=cfg.optim.curvature, densify=cfg.strategy.densify,
                   n_gaussians=metrics.get("n_gaussians"), finished=bool(metrics.get("finished")),
                   densify_events=[e for e in metrics.get("densify") or [] if isinstance(e, dict)])

    @property
    def description(self) -> str:
        """``tr (hutchinson)``, ``adam, adc``: what the label of a legend adds."""
        text = self.optimizer + (f" ({self.curvature})" if self.optimizer == "tr" else "")
        return text + (f", {self.densify}" if self.densify and self.densify != "none" else "")

    @property
    def legend(self) -> str:
        """The label, with the description unless it already starts with the label."""
        if not self.description or self.description.startswith(self.label):
            return self.description or self.label
        return f"{self.label} ({self.description})"


# -- the hook ---------------------------------------------------------------------------------
class TrainingCurves(Hook):
    """Keeps the per-step series in memory, writes ``curves.json`` before every checkpoint the
    trainer saves (every ``checkpoint_every`` steps, at evals, on exit) and redraws
    ``curves.png`` at each evaluation. Observes only: nothing it does changes the training."""

    def __init__(self) -> None:
        self.run_dir: RunDir | None = None
        self.steps = empty_steps()

    def on_start(self, trainer: "Trainer") -> None:
        self.run_dir = trainer.run_dir
        start = trainer.state.iteration
        self.steps = truncate_steps(read_steps(self.run_dir), start) if start > 0 else empty_steps()

    def on_step(self, trainer: "Trainer", iteration: int, loss: float, psnr: float) -> None:
        s = self.steps
        s["iteration"].append(iteration)
        s["loss"].append(float(f"{loss:.6g}"))
        s["train_psnr"].append(round(psnr, 3))
        s["train_seconds"].append(round(trainer.state.train_seconds, 4))
        s["n_gaussians"].append(len(trainer.gaussians))
        if iteration % trainer.cfg.checkpoint_every == 0:  # the trainer saves a checkpoint after this
            self.save()

    def on_eval(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.save()
        cfg = trainer.cfg
        run = RunCurves(label=trainer.run_dir.path.name, steps=self.steps, evals=list(trainer.state.evals),
                        optimizer=cfg.optim.optimizer, curvature=cfg.optim.curvature,
                        densify=cfg.strategy.densify, n_gaussians=len(trainer.gaussians),
                        densify_events=list(trainer.strategy.records()))
        plot_runs([run], trainer.run_dir.curves_plot_path, title=f"{trainer.scene.name}: {run.label}")

    def on_close(self, trainer: "Trainer") -> None:
        if self.run_dir is not None:
            self.save()

    def save(self) -> None:
        if self.run_dir is not None:
            self.run_dir.write_curves({"format": CURVES_FORMAT, "steps": self.steps})


# -- drawing ----------------------------------------------------------------------------------
def run_colors(runs: list[RunCurves]) -> list[str]:
    """The study's colour per optimiser where it is unique among ``runs``, other colours otherwise."""
    wanted = [optimizer_color(r.optimizer, r.curvature) for r in runs]
    spare = iter(c for c in OTHER_COLORS if c not in wanted)
    return [c if c is not None and wanted.count(c) == 1 else next(spare, "#7f7f7f") for c in wanted]


def _thin(xs: list[float], ys: list[float]) -> tuple[list[float], list[float]]:
    step = max(1, len(xs) // MAX_POINTS)
    return xs[::step], ys[::step]


def _smooth(values: list[float]) -> list[float]:
    """Centred moving average over an odd window of ~1% of the run (at most 501 steps)."""
    import numpy as np

    half = min(250, len(values) // 200)
    if half == 0:
        return list(values)
    window = 2 * half + 1
    v = np.asarray(values, dtype=np.float64)
    kernel = np.ones(window) / window
    padded = np.pad(v, (half, half), mode="edge")
    return np.convolve(padded, kernel, mode="valid").tolist()


def _eval_series(run: RunCurves, x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(e.get(x), e.get(y)) for e in run.evals]
    pts = [(a, b) for a, b in pts if isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isfinite(b)]
    return [p[0] for p in pts], [p[1] for p in pts]


def _on_bound(run: RunCurves) -> dict[str, tuple[list[float], list[float]]]:
    """Per parameter: (eval iterations, share of proposed steps clipped since the previous eval)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for e in run.evals:
        for name, value in (e.get("on_bound_fraction") or {}).items():
            xs, ys = out.setdefault(name, ([], []))
            xs.append(e["iteration"])
            ys.append(value)
    return out


def _panels(runs: list[RunCurves]) -> list[tuple[str, str, str]]:
    """(kind, x key, title) of each panel that some run has data for."""
    has = lambda key: any(_eval_series(r, "iteration", key)[0] for r in runs)  # noqa: E731
    panels = [("loss", "iteration", "training loss"), ("loss", "train_seconds", "training loss"),
              ("n_gaussians", "iteration", "Gaussians")]
    for metric, title in (("psnr", "test PSNR (dB)"), ("ssim", "test SSIM"), ("lpips", "test LPIPS")):
        if metric == "psnr" or has(metric):
            panels += [(metric, "iteration", title), (metric, "train_seconds", title)]
    if any(_on_bound(r) for r in runs):
        panels.append(("on_bound", "iteration", "steps clipped to the trust region"))
    if any(_densify_shares(r) for r in runs):
        panels.append(("densify", "iteration", "share of the Gaussians per refinement"))
    if any(_ratio_test(r, "scale")[0] for r in runs):  # the adaptive radius (--tr-radius adaptive)
        panels += [("radius_scale", "iteration", "radius factor κ on ε"),
                   ("ratio_test", "iteration", "trust-region ratio test")]
    return panels


RATIO_TEST_SERIES = (("rho_mean", "mean ρ"), ("accept_fraction", "ρ > 0"), ("shrink_fraction", "shrunk"),
                     ("grow_fraction", "grown"))
"""The ``ratio_test`` keys of an eval record drawn in the ratio-test panel, with their labels."""


DENSIFY_COUNTS = ("relocated", "added", "cloned", "split", "pruned")
"""The counts of a strategy's refinement records drawn in the densification panel."""


def _densify_shares(run: RunCurves) -> dict[str, tuple[list[float], list[float]]]:
    """{count: (refinement iterations, count / Gaussians after the refinement)} of each count in
    :data:`DENSIFY_COUNTS` that the run's records have."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for e in run.densify_events:
        after = e.get("after")
        if not isinstance(after, (int, float)) or after <= 0 or "iteration" not in e:
            continue
        for key in DENSIFY_COUNTS:
            if isinstance(e.get(key), (int, float)):
                xs, ys = out.setdefault(key, ([], []))
                xs.append(e["iteration"])
                ys.append(e[key] / after)
    return out


def _ratio_test(run: RunCurves, key: str) -> tuple[list[float], list[float]]:
    """(eval iterations, ``ratio_test[key]``) where the eval has that number."""
    pts = [(e["iteration"], (e.get("ratio_test") or {}).get(key)) for e in run.evals]
    pts = [(x, y) for x, y in pts if isinstance(y, (int, float)) and math.isfinite(y)]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_runs(runs: list[RunCurves], path: str | Path, title: str = "") -> None:
    """Draw ``runs`` on shared axes into one PNG (see the module docstring for the panels)."""
    from matplotlib.figure import Figure

    panels = _panels(runs)
    cols = 3
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.1 * rows + (0.4 if title else 0.0)))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    colors = run_colors(runs)
    single = len(runs) == 1
    for ax, (kind, xkey, panel_title) in zip(axes, panels):
        xlabel = "iteration" if xkey == "iteration" else "train seconds"
        for run, color in zip(runs, colors):
            label = run.legend
            _draw(ax, run, kind, xkey, color, label, single)
        ax.set_xlabel(xlabel)
        ax.set_title(f"{panel_title} vs {xlabel}", fontsize=9)
        ax.grid(True, alpha=0.3)
        if kind == "loss" and any(run.steps["loss"] for run in runs):
            ax.set_yscale("log")
        if kind == "radius_scale" and ax.has_data():
            ax.set_yscale("log", base=2)
        if ax.has_data() and (kind == "psnr" and xkey == "iteration" or kind in ("on_bound", "radius_scale",
                                                                                  "ratio_test", "densify")):
            ax.legend(fontsize=7, loc="best")
        if not ax.has_data():
            ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center", color="grey")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def _draw(ax, run: RunCurves, kind: str, xkey: str, color: str, label: str, single: bool) -> None:
    steps = run.steps
    if kind == "loss":
        xs, ys = steps[xkey], steps["loss"]
        if not xs:
            return
        if single:  # the raw per-step loss, faint, under its moving average
            ax.plot(*_thin(xs, ys), color=color, alpha=0.25, linewidth=0.6)
        ax.plot(*_thin(xs, _smooth(ys)), color=color, linewidth=1.4, label=label)
    elif kind == "n_gaussians":
        if steps["iteration"]:
            ax.plot(*_thin(steps["iteration"], steps["n_gaussians"]), color=color, linewidth=1.4,
                    label=f"{label}: all")
        xs, ys = _eval_series(run, "iteration", "n_alive")
        if xs:
            ax.plot(xs, ys, color=color, linestyle=":", marker="x", markersize=4, linewidth=1.0,
                    label=f"{label}: opacity >= 1/255")
        if single and ax.has_data():
            ax.legend(fontsize=7, loc="best")
    elif kind == "on_bound":
        series = _on_bound(run)
        if single:  # one line per parameter
            for k, (name, (xs, ys)) in enumerate(sorted(series.items())):
                ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name,
                        color=OTHER_COLORS[k % len(OTHER_COLORS)])
        elif series:  # one line per run: the mean over parameters
            its = sorted({x for xs, _ in series.values() for x in xs})
            means = [sum(ys[xs.index(i)] for xs, ys in series.values() if i in xs)
                     / sum(1 for xs, _ in series.values() if i in xs) for i in its]
            ax.plot(its, means, color=color, marker="o", markersize=3, linewidth=1.4, label=f"{label} (mean)")
        ax.set_ylim(0, 1)
    elif kind == "densify":
        shares = _densify_shares(run)
        if single:  # one line per count
            for k, (name, (xs, ys)) in enumerate(shares.items()):
                ax.plot(*_thin(xs, ys), linewidth=1.0, label=name, color=OTHER_COLORS[k % len(OTHER_COLORS)])
        elif "relocated" in shares:  # one line per run: MCMC's churn (ADC: its clones)
            ax.plot(*_thin(*shares["relocated"]), color=color, linewidth=1.2, label=f"{label}: relocated")
        elif "cloned" in shares:
            ax.plot(*_thin(*shares["cloned"]), color=color, linewidth=1.2, label=f"{label}: cloned")
    elif kind == "radius_scale":
        xs, ys = _ratio_test(run, "scale")
        if xs:
            ax.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1.4, label=f"{label}: κ at eval")
        xs, ys = _ratio_test(run, "scale_mean")
        if xs and single:
            ax.plot(xs, ys, color=color, linestyle=":", linewidth=1.0, label=f"{label}: geometric mean")
    elif kind == "ratio_test":
        if single:  # one line per statistic
            for k, (key, name) in enumerate(RATIO_TEST_SERIES):
                xs, ys = _ratio_test(run, key)
                if xs:
                    ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.2, label=name,
                            color=OTHER_COLORS[k % len(OTHER_COLORS)])
        else:  # one line per run: the mean ρ
            xs, ys = _ratio_test(run, "rho_mean")
            if xs:
                ax.plot(xs, ys, color=color, marker="o", markersize=3, linewidth=1.4, label=f"{label} (mean ρ)")
    else:
        xs, ys = _eval_series(run, xkey, kind)
        if xs:
            ax.plot(xs, ys, color=color, marker="o", markersize=3.5, linewidth=1.4, label=label)


# -- trsplat compare ----------------------------------------------------------------------------
def _fmt(value: Any, digits: int) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def comparison_table(runs: list[RunCurves]) -> str:
    """Markdown: the final test metrics and cost of each run, then test PSNR at each evaluation."""
    lines = ["| run | optimizer | iterations | test PSNR | SSIM | LPIPS | train seconds | s/iteration | "
             "Gaussians | best PSNR (iteration) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        last = run.evals[-1] if run.evals else {}
        best = max(run.evals, key=lambda e: e.get("psnr", -math.inf), default={})
        n = run.n_gaussians if run.n_gaussians is not None else (run.steps["n_gaussians"] or [None])[-1]
        iteration = f"{last.get('iteration', '–')}" + ("" if run.finished else " (unfinished)")
        lines.append(f"| {run.label} | {run.description} | {iteration} | {_fmt(last.get('psnr'), 2)} | "
                     f"{_fmt(last.get('ssim'), 4)} | {_fmt(last.get('lpips'), 4)} | "
                     f"{_fmt(last.get('train_seconds'), 1)} | {_fmt(last.get('seconds_per_iteration'), 4)} | "
                     f"{n if n is not None else '–'} | {_fmt(best.get('psnr'), 2)} ({best.get('iteration', '–')}) |")
    iterations = sorted({e["iteration"] for run in runs for e in run.evals if "iteration" in e})
    if iterations:
        lines += ["", "Test PSNR (dB) at each evaluation:", "",
                  "| iteration | " + " | ".join(run.label for run in runs) + " |",
                  "|---|" + "---|" * len(runs)]
        for it in iterations:
            cells = [_fmt(next((e.get("psnr") for e in run.evals if e.get("iteration") == it), None), 2)
                     for run in runs]
            lines.append(f"| {it} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_labels(paths: list[Path]) -> list[str]:
    """Folder names, each with as many parent folders as it takes to tell it from the others."""
    resolved = [p.resolve() for p in paths]
    labels = []
    for i, path in enumerate(resolved):
        others = [q for j, q in enumerate(resolved) if j != i]
        depth = next((d for d in range(1, len(path.parts) + 1)
                      if all(path.parts[-d:] != q.parts[-d:] for q in others)), len(path.parts))
        labels.append("/".join(path.parts[-depth:]))
    return labels


COMPARE_PLOT = "compare.png"
COMPARE_TABLE = "compare.md"


def compare_runs(paths: list[str | Path], out_dir: str | Path,
                 labels: list[str] | None = None) -> tuple[Path, Path, str]:
    """``trsplat compare``: write ``OUT/compare.png`` (the runs on shared axes) and
    ``OUT/compare.md`` (:func:`comparison_table`); returns both paths and the table."""
    from trsplat.io_utils import ensure_dir

    paths = [Path(p) for p in paths]
    if labels is not None and len(labels) != len(paths):
        raise TrsplatError(f"--labels: {len(labels)} labels for {len(paths)} runs")
    labels = labels or run_labels(paths)
    runs = [RunCurves.from_run(p, label) for p, label in zip(paths, labels)]
    out = ensure_dir(out_dir)
    plot_path, table_path = out / COMPARE_PLOT, out / COMPARE_TABLE
    plot_runs(runs, plot_path, title=" vs ".join(labels))
    table = comparison_table(runs)
    with atomic_write(table_path) as tmp:
        tmp.write_text(f"# {' vs '.join(labels)}\n\n![curves]({COMPARE_PLOT})\n\n{table}")
    return plot_path, table_path, table
