"""Plots of the optimizer study (matplotlib, Agg; drawn from ``results.json`` data only).

* ``psnr_<scene>.png`` (and ``psnr_average.png`` with several scenes): test PSNR against iteration
  and against train seconds, mean over seeds with a ±1 std band; the reference's final PSNR is a
  dotted line and ``iters / 2`` a vertical line, so "who reaches ADAM's final quality first" is
  visible at a glance;
* ``psnr_overview.png``: every scene in one figure (both panels per scene);
* ``peak_memory.png``: peak RSS (and CUDA memory when recorded) per variant and scene, mean ± std.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot global state, Agg canvas) and
written atomically (:func:`trsplat.training.plots.save_figure`, with the colours the run curves use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trsplat.training.plots import ADAM_TR_COLOR, OTHER_COLORS, optimizer_color, save_figure

_EPS_STYLES = {"paper": "-", "rebuttal": "--", "small": ":"}


def variant_styles(spec) -> dict[str, dict[str, Any]]:
    """Colour by optimiser/curvature, line style by ε schedule; ablations get their own colours."""
    styles: dict[str, dict[str, Any]] = {}
    k = 0
    for name, v in spec.variants.items():
        meta = v.meta
        opt = meta.get("optimizer")
        if name == spec.reference or (opt == "adam" and "ablation" not in meta):
            color = "black"
        elif "ablation" in meta:
            color = OTHER_COLORS[k % len(OTHER_COLORS)]
            k += 1
        elif opt == "adam-tr":
            color = ADAM_TR_COLOR
        elif opt == "tr":
            color = optimizer_color(opt, meta.get("curvature")) or OTHER_COLORS[k % len(OTHER_COLORS)]
        else:
            color = OTHER_COLORS[k % len(OTHER_COLORS)]
            k += 1
        style = _EPS_STYLES.get(meta.get("eps"), "-.") if "eps" in meta else "-"
        styles[name] = {"color": color, "linestyle": style,
                        "linewidth": 2.4 if name == spec.reference else 1.6}
    return styles


def _series(summary: dict[str, Any], xkey: str | None):
    """(x, mean, std) of the PSNR curve where the mean exists; x is iteration or mean train seconds."""
    its = summary["iterations"]
    mean, std = summary["psnr"]["mean"], summary["psnr"]["std"]
    xs = its if xkey is None else summary[xkey]["mean"]
    pts = [(x, m, s) for x, m, s in zip(xs, mean, std) if m is not None and x is not None]
    return [p[0] for p in pts], [p[1] for p in pts], [p[2] for p in pts]


def _draw_psnr(ax_it, ax_t, spec, res: dict[str, Any], styles, title: str) -> bool:
    """Draw one scene's two panels; returns whether anything was drawn."""
    ref = res["variants"].get(spec.reference)
    final = ref["final"]["psnr"]["mean"] if ref else None
    # legend sorted by final PSNR (best first), variants without a final value last
    order = sorted(spec.variants, key=lambda v: -(res["variants"][v]["final"]["psnr"]["mean"] or -1e9))
    drawn = False
    for v in order:
        s = res["variants"][v]
        for ax, xkey in ((ax_it, None), (ax_t, "train_seconds")):
            x, m, sd = _series(s, xkey)
            if not x:
                continue
            drawn = True
            fm = s["final"]["psnr"]["mean"]
            label = f"{v} ({fm:.2f})" if fm is not None else f"{v} (unfinished)"
            ax.plot(x, m, marker="o", markersize=2.5, label=label, **styles[v])
            band = [(xi, mi, si) for xi, mi, si in zip(x, m, sd) if si is not None]
            if len(band) > 1:
                ax.fill_between([b[0] for b in band], [b[1] - b[2] for b in band], [b[1] + b[2] for b in band],
                                color=styles[v]["color"], alpha=0.15, linewidth=0)
    for ax, xlabel in ((ax_it, "iteration"), (ax_t, "train seconds (mean over seeds)")):
        if final is not None:
            ax.axhline(final, color="black", linestyle=":", linewidth=1.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test PSNR (dB)")
        ax.grid(True, alpha=0.3)
    ax_it.axvline(spec.iters / 2, color="grey", linestyle=":", linewidth=1.0)
    ax_it.set_title(f"{title}: PSNR vs iteration (dotted: {spec.reference} final, T/2)", fontsize=9)
    ax_t.set_title(f"{title}: PSNR vs train time", fontsize=9)
    if drawn:
        ax_t.legend(fontsize=7, loc="lower right", title="final PSNR", title_fontsize=7)
    return drawn


def plot_psnr(spec, res: dict[str, Any], title: str, path: Path) -> bool:
    from matplotlib.figure import Figure

    styles = variant_styles(spec)
    fig = Figure(figsize=(12, 4.5))
    ax_it, ax_t = fig.subplots(1, 2)
    drawn = _draw_psnr(ax_it, ax_t, spec, res, styles, title)
    fig.tight_layout()
    save_figure(fig, path)
    return drawn


def plot_overview(spec, items: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    from matplotlib.figure import Figure

    styles = variant_styles(spec)
    fig = Figure(figsize=(12, 3.8 * len(items)))
    axes = fig.subplots(len(items), 2, squeeze=False)
    for (scene, res), (ax_it, ax_t) in zip(items, axes):
        _draw_psnr(ax_it, ax_t, spec, res, styles, scene)
    fig.tight_layout()
    save_figure(fig, path)


def plot_memory(spec, items: list[tuple[str, dict[str, Any]]], path: Path) -> None:
    """Grouped bars: one group per scene, one bar per variant (mean ± std over finished seeds)."""
    from matplotlib.figure import Figure

    styles = variant_styles(spec)
    kinds = [("peak_rss_bytes", "peak RSS (MiB)")]
    if any(res["variants"][v]["peak_cuda_bytes"]["mean"] is not None for _, res in items for v in spec.variants):
        kinds.append(("peak_cuda_bytes", "peak CUDA memory (MiB)"))
    variants = list(spec.variants)
    fig = Figure(figsize=(max(6.0, 1.0 + 0.35 * len(variants) * len(items)), 4.2 * len(kinds)))
    axes = fig.subplots(len(kinds), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(variants), 1)
    for ax, (key, label) in zip(axes, kinds):
        top = 0.0
        for j, v in enumerate(variants):
            xs, hs, es, used = [], [], [], []
            for i, (_, res) in enumerate(items):
                st = res["variants"][v][key]
                if st["mean"] is None:
                    continue
                used.append(i)
                xs.append(i - 0.4 + width * (j + 0.5))
                hs.append(st["mean"] / 2**20)
                es.append((st["std"] or 0.0) / 2**20)
            if xs:
                ax.bar(xs, hs, width=width * 0.95, yerr=es, capsize=2, label=v, color=styles[v]["color"],
                       hatch="//" if styles[v]["linestyle"] == "--" else None, edgecolor="white", linewidth=0.5)
                top = max(top, max(h + e for h, e in zip(hs, es)))
            for x, h, e, i in zip(xs, hs, es, used):   # ratio to the reference, above each bar
                ref = items[i][1]["variants"][spec.reference][key]["mean"]
                if ref:
                    ax.text(x, h + e, f"{h * 2**20 / ref:.2f}×", ha="center", va="bottom", fontsize=6,
                            rotation=90 if len(variants) > 4 else 0)
        ax.set_xticks(range(len(items)))
        ax.set_xticklabels([s for s, _ in items])
        ax.set_ylabel(label)
        ax.grid(True, axis="y", alpha=0.3)
        ax.set_title(f"{label}, finished runs, mean ± std over seeds\n(labels: ratio to {spec.reference})",
                     fontsize=9)
        if top > 0:
            ax.set_ylim(0, top * 1.45)
            ax.legend(fontsize=7, ncol=3, loc="upper center")
        else:
            ax.text(0.5, 0.5, "no finished runs yet", transform=ax.transAxes, ha="center", va="center")
    fig.tight_layout()
    save_figure(fig, path)


def write_plots(spec, results: dict[str, Any], plot_dir: str | Path) -> list[str]:
    """Write every plot; returns their paths relative to the study folder (``plots/...``)."""
    plot_dir = Path(plot_dir)
    items = list(results["scenes"].items())
    if len(items) > 1:
        items.append(("average", results["average"]))
    written = []
    for scene, res in items:
        plot_psnr(spec, res, scene, plot_dir / f"psnr_{scene}.png")
        written.append(f"{plot_dir.name}/psnr_{scene}.png")
    plot_overview(spec, items, plot_dir / "psnr_overview.png")
    written.append(f"{plot_dir.name}/psnr_overview.png")
    plot_memory(spec, items, plot_dir / "peak_memory.png")
    written.append(f"{plot_dir.name}/peak_memory.png")
    return written
