"""The report of a study: ``results.json``, ``results.md`` (tables and verdicts) and ``plots/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from trsplat.machine import machine_text
from trsplat.bench.study.aggregate import LOWER_IS_BETTER, fmt_num, scene_items, summarize
from trsplat.bench.study.spec import RESULTS_JSON, RESULTS_MD, StudySpec, echo
from trsplat.io_utils import atomic_write, write_json


def aggregate(spec: StudySpec, out_dir: str | Path, *, command: str = "", plots: bool = True,
              log: Callable[[str], None] = echo) -> dict[str, Any]:
    """Write ``results.json``, ``results.md`` and ``plots/*.png`` from the run folders."""
    out_dir = Path(out_dir)
    results = summarize(spec, out_dir, command=command)
    _write(spec, results, out_dir)
    if plots:
        from trsplat.bench.study.plots import write_plots

        results["plots"] = write_plots(spec, results, out_dir / "plots")
        _write(spec, results, out_dir)
    log(f"wrote {out_dir / RESULTS_JSON}, {out_dir / RESULTS_MD}"
        + (f" and {len(results.get('plots', []))} plots" if plots else ""))
    return results


def _write(spec: StudySpec, results: dict[str, Any], out_dir: Path) -> None:
    write_json(out_dir / RESULTS_JSON, results)
    with atomic_write(out_dir / RESULTS_MD) as tmp:
        tmp.write_text(format_markdown(spec, results))


def _cell(stat: dict[str, Any] | None, key: str, expected: int, *, scale: float = 1.0,
          digits: str | None = None) -> str:
    if not stat or stat.get("mean") is None:
        return "—"
    fmt = (lambda x: f"{x:{digits}}") if digits else (lambda x: fmt_num(x, key))
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
    items = scene_items(results)
    any_cuda = any(s["variants"][v]["peak_cuda_bytes"]["mean"] is not None for _, s in items for v in spec.variants)
    st = results["run_states"]
    L: list[str] = [
        f"# Optimizer study: {spec.name}", "",
        f"Generated {results['generated']} by `{results['command'] or 'trsplat bench optimizers'}`.", "",
        f"Runs: {st['finished']}/{sum(st.values())} finished, {st['partial']} partial, {st['missing']} missing, "
        f"{st['failed']} failed. {len(spec.variants)} variants × {len(spec.scenes)} scenes × "
        f"{n_seeds} seeds ({', '.join(map(str, spec.seeds))}), {T} iterations, {_densification(spec)}, "
        f"identical initialisation per (scene, seed); test-view evaluation at {', '.join(map(str, its))}.", "",
        "Cells are mean ± sample std over seeds; `(k/n)` marks a value over fewer seeds than planned "
        "(unfinished runs). Derived figures and verdicts use finished runs only, over the seeds where "
        f"both compared variants finished. Reference: `{ref}`."]
    for p in results.get("init_consistency_problems") or []:
        L.append(f"\n**Warning**: {p}")
    # ---- provenance
    L += ["", "## Setup", ""]
    invs = results.get("invocations") or []
    commands = sorted({i.get("command", "") for i in invs if i.get("command")})
    L += (["Runs executed by:"] + [f"- `{c}`" for c in commands] if commands
          else ["Runs executed by: no record in invocations.json (runs made outside this command)."])
    machines = []
    for i in invs:
        m = i.get("machine") or {}
        desc = machine_text(m) + (f"; {i.get('jobs', 1)} run(s) at a time, "
                                   f"{i.get('threads') or 'default'} threads each" if m else "")
        if desc and desc not in machines:
            machines.append(desc)
    if machines:
        L += ["", "Machine(s) that ran the trainings:"] + [f"- {m}" for m in machines]
    L += ["", f"Aggregated on: {machine_text(results['aggregated_on'])}."]
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
        L += ["", "Options common to all runs: " + ", ".join(f"`{k}={v}`" for k, v in spec.common.items()) + "."]
    L += ["", "Variants:", ""]
    L += _table(["variant", "what", "options"],
                [[v, ", ".join(f"{k}={x}" for k, x in s.meta.items()),
                  ", ".join(f"`{k}={x}`" for k, x in s.overrides.items())] for v, s in spec.variants.items()])
    # ---- at a glance
    L += ["", "## At a glance", ""]
    best_of = (("psnr", T), ("ssim", T), ("lpips", T), ("psnr", half))
    rows = [[scene] + [_best(res, spec, key, it) for key, it in best_of] for scene, res in items]
    L += _table(["scene", f"best PSNR@{T}", f"best SSIM@{T}", f"best LPIPS@{T}", f"best PSNR@{half}"], rows)
    L += ["", "Best = highest seed mean (lowest for LPIPS) among variants with all seeds evaluated at that "
          "iteration; plots in `plots/`."]
    # ---- verdicts
    L += ["", "## Verdicts", "", "Generated from the numbers below; \"holds\" compares seed means only "
          "(no significance test).", ""]
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
            L += ["", f"**{title}**", ""] + [f"- {v['text']}" for v in chosen]
    # ---- Table 1 layout
    mem_key = "peak_cuda_bytes" if any_cuda else "peak_rss_bytes"
    L += ["", f"## Table 1 layout (@{'/'.join(map(str, table_its))})", ""]
    rows = []
    for scene, res in items:
        for v in spec.variants:
            s = res["variants"][v]
            cells = [" / ".join(_cell(_curve_stat(s, key, it), key, n_seeds) for it in table_its)
                     for key in ("ssim", "psnr", "lpips")]
            rows.append([scene, v, *cells, _cell(s["total_train_seconds"], "", n_seeds, digits=".1f"),
                         _cell(s[mem_key], "", n_seeds, scale=2**20, digits=".0f")])
    L += _table(["Scene", "Method", "SSIM ↑", "PSNR ↑", "LPIPS ↓", "Time (s)",
                 f"Mem ({'CUDA' if any_cuda else 'RSS'}, MiB)"], rows)
    # ---- per eval iteration
    for key, title in (("psnr", "PSNR ↑"), ("ssim", "SSIM ↑"), ("lpips", "LPIPS ↓ (3DGS convention)")):
        L += ["", f"## Test {title} at each eval iteration", ""]
        for scene, res in items:
            L += [f"**{scene}**", ""] + _table(
                ["variant"] + [str(i) for i in its],
                [[v] + [_cell(_curve_stat(res["variants"][v], key, it), key, n_seeds) for it in its]
                 for v in spec.variants]) + [""]
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
        L += _table(header, rows) + [""]
    # ---- on-bound fractions
    L += ["## Steps on the trust-region bound", "",
          "Fraction of non-zero proposed steps clipped to the Hellinger radius, per parameter type, over the "
          "whole run (per-eval-interval fractions weighted by the interval's iterations), finished runs.", ""]
    for scene, res in items:
        tr_vs = [v for v in spec.variants if res["variants"][v]["on_bound_fraction"]]
        if not tr_vs:
            continue
        names = sorted(set().union(*(res["variants"][v]["on_bound_fraction"] for v in tr_vs)))
        L += [f"**{scene}**", ""] + _table(
            ["variant"] + names, [[v] + [_cell(res["variants"][v]["on_bound_fraction"].get(n), "", n_seeds,
                                               digits=".3f") for n in names] for v in tr_vs]) + [""]
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
            memory = ((f"{mr['rss']:.2f}" if mr and mr.get("rss") is not None else "—")
                      + (f" ({mr['cuda']:.2f})" if mr and mr.get("cuda") is not None else ""))
            rows.append([v, _ratio(ir), _ratio(tr_), memory, _gap(gap, "psnr", its.index(half)),
                         _gap(gap, "psnr", its.index(T)),
                         f"{_gap(gap, 'ssim', its.index(T), '.3f')} / {_gap(gap, 'lpips', its.index(T), '.3f')}"])
        L += _table(["variant", "iteration_ratio", "time_ratio", "memory_ratio", f"ΔPSNR@{half}",
                     f"ΔPSNR@{T}", f"ΔSSIM / ΔLPIPS @{T}"], rows) + [""]
    gains = [(scene, v, g) for scene, res in items for v, g in res["curvature_gain"].items()]
    if gains:
        L += ["## Curvature gain", "", "PSNR of each curvature estimator minus the same variant with "
              "`--curvature none` (paired over seeds), at each eval iteration.", ""]
        rows = [[scene, v, "—"] + ["—"] * len(its) if g is None
                else [scene, v, g["baseline"]] + [_gap(g, "psnr", k) for k in range(len(its))]
                for scene, v, g in gains]
        L += _table(["scene", "variant", "vs"] + [str(i) for i in its], rows) + [""]
    # ---- run states
    bad = [r for r in results["runs"] if r["state"] != "finished"]
    L += ["## Runs not finished", ""]
    if bad:
        L += [f"- `{r['path']}`: {r['state']}" + (f" at iteration {r['last_iteration']}" if r["last_iteration"] else "")
              + (f" — {' '.join(str(r['error']).split())[:200]}" if r.get("error") else "") for r in bad]
    else:
        L.append("- none: every planned run finished.")
    if results.get("plots"):
        L += ["", "## Plots", ""] + [f"- [`{p}`]({p})" for p in results["plots"]]
    return "\n".join(L) + "\n"


def _best(res: dict[str, Any], spec: StudySpec, key: str, it: int) -> str:
    stats = [(_curve_stat(res["variants"][v], key, it), v) for v in spec.variants]
    cands = [(st["mean"], v) for st, v in stats if st["mean"] is not None and st["n"] == len(spec.seeds)]
    if not cands:
        return "—"
    mean, v = (min if key in LOWER_IS_BETTER else max)(cands)
    return f"{v} ({fmt_num(mean, key)})"


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


def _densification(spec: StudySpec) -> str:
    """The setup line's densification: none, or the strategies of the variants (and common options)."""
    names = sorted({str({**spec.common, **v.overrides}.get("densify", "none")) for v in spec.variants.values()})
    used = [n for n in names if n != "none"]
    return f"densification {'/'.join(names)} per variant" if used else "no densification"
