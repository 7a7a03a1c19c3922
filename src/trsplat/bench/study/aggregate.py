"""Aggregating a study: read the run folders, compute the statistics, derived figures and verdicts.

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

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from trsplat.machine import machine_info, now
from trsplat.bench.study.spec import (AVERAGE, EVAL_KEYS, FAILURES_FILE, INIT_KEYS, INVOCATIONS_FILE, StudySpec,
                                      read_json, run_dir, run_metrics)
from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError
from trsplat.training import RunDir

QUALITY = ("psnr", "ssim", "lpips")
EVAL_VALUES = ("psnr", "ssim", "lpips", "lpips_corrected", "lpips_alex", "train_seconds",
               "seconds_per_iteration")
UNKNOWN_MACHINE = "unknown machine"
LOWER_IS_BETTER = {"lpips", "lpips_corrected", "lpips_alex"}


@dataclass
class RunData:
    """What aggregation needs from one run folder."""

    state: str                                  # finished | partial | missing | failed
    evals: dict[int, dict[str, float | None]]   # iteration -> values of EVAL_VALUES
    last_iteration: int = 0
    peak_rss_bytes: float | None = None
    peak_cuda_bytes: float | None = None
    on_bound_fraction: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None          # {leaf option: value}
    backend: str | None = None
    n_gaussians: int | None = None
    machines: dict[int, str] = field(default_factory=dict)  # iteration -> machine label (newer runs)

    @property
    def finished(self) -> bool:
        return self.state == "finished"

    def value(self, key: str, iteration: int) -> float | None:
        return (self.evals.get(iteration) or {}).get(key)


def load_run(path: str | Path, iters: int, failed: bool = False) -> RunData:
    """Read ``metrics.json`` / ``config.json`` of one run folder (any state)."""
    metrics = run_metrics(path)
    evals_raw = metrics.get("evals") or []
    config = _flat_config(path, metrics.get("config"))
    if not evals_raw:
        return RunData("failed" if failed else "missing", {}, config=config)
    evals: dict[int, dict[str, float | None]] = {}
    for e in sorted(evals_raw, key=lambda e: e.get("iteration", 0)):
        evals[int(e["iteration"])] = {k: _num(e.get(k)) for k in EVAL_VALUES}
    rss = [e.get("peak_rss_bytes") for e in evals_raw if e.get("peak_rss_bytes") is not None]
    cuda = [e.get("peak_cuda_bytes") for e in evals_raw if e.get("peak_cuda_bytes") is not None]
    state = "finished" if RunDir(path).status(iters) == "finished" else ("failed" if failed else "partial")
    machines = {int(e["iteration"]): str(e["machine"]) for e in evals_raw if e.get("machine")}
    return RunData(state, evals, max(evals), max(rss) if rss else None, max(cuda) if cuda else None,
                   _on_bound(evals_raw), config,
                   metrics.get("backend"), metrics.get("n_gaussians"), machines)


def _flat_config(path: str | Path, stored: dict[str, Any] | None) -> dict[str, Any] | None:
    """The run's options ``{leaf: value}`` from ``metrics.json`` or ``config.json``; None if unreadable."""
    try:
        return (TrainConfig.from_dict(stored) if stored else RunDir(path).read_config()).flat()
    except TrsplatError:
        return None


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


def collect(spec: StudySpec, out_dir: str | Path, failures: dict[str, Any]) -> dict[str, dict[str, dict[int, RunData]]]:
    """``data[scene][variant][seed]`` for every run of the spec, plus the ``"average"`` pseudo-scene."""
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
            row[key] = _mean_all([r.value(key, it) for r in runs])
        if any(v is not None for v in row.values()):
            evals[it] = row
    state = "finished" if all(r.finished for r in runs) else ("partial" if evals else "missing")

    names = set().union(*(r.on_bound_fraction for r in runs)) if runs else set()
    bound = {n: _mean([r.on_bound_fraction[n] for r in runs]) for n in sorted(names)
             if all(n in r.on_bound_fraction for r in runs)}
    machines = {}  # per iteration: the scenes' labels, joined when they differ
    for it in iterations:
        labels = sorted({r.machines[it] for r in runs if it in r.machines})
        if labels:
            machines[it] = " | ".join(labels)
    return RunData(state, evals, max(evals) if evals else 0,
                   _mean_all([r.peak_rss_bytes for r in runs]), _mean_all([r.peak_cuda_bytes for r in runs]), bound,
                   machines=machines)


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)


def _mean_all(values: list[float | None]) -> float | None:
    """The mean, or None where there is no value or one is missing."""
    return _mean(values) if values and all(v is not None for v in values) else None


def mean_std(values: Iterable[float | None]) -> dict[str, Any]:
    """``{"mean", "std", "n"}`` over the non-null values; std is the sample std (null for n < 2)."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": _mean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}


def _curve(runs: dict[int, RunData], key: str, iterations: list[int]) -> dict[str, list]:
    stats = [mean_std(r.value(key, it) for r in runs.values()) for it in iterations]
    return {"mean": [s["mean"] for s in stats], "std": [s["std"] for s in stats], "n": [s["n"] for s in stats]}


def _finished_seeds(*groups: dict[int, RunData]) -> list[int]:
    seeds = None
    for runs in groups:
        done = {s for s, r in runs.items() if r.finished}
        seeds = done if seeds is None else seeds & done
    return sorted(seeds or [])


def _mean_at(runs: dict[int, RunData], seeds: list[int], key: str, it: int) -> float | None:
    return _mean_all([runs[s].value(key, it) for s in seeds])


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


def summarize(spec: StudySpec, out_dir: str | Path, *, command: str = "") -> dict[str, Any]:
    """The content of ``results.json`` from the run folders (any state)."""
    out_dir = Path(out_dir)
    failures = read_json(out_dir / FAILURES_FILE) or {}
    data = collect(spec, out_dir, failures)
    states = {"finished": 0, "partial": 0, "missing": 0, "failed": 0}
    runs = []
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
        "generated": now(),
        "command": command,
        "aggregated_on": machine_info(threads=False),
        "invocations": read_json(out_dir / INVOCATIONS_FILE) or [],
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
    return results


def scene_items(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    items = list(results["scenes"].items())
    if len(items) > 1:
        items.append((AVERAGE, results[AVERAGE]))
    return items


def verdicts(spec: StudySpec, results: dict[str, Any], data) -> list[dict[str, Any]]:
    """Statements checked against the numbers: finished runs, over the seeds where both compared
    variants finished; "holds" compares seed means (no significance test)."""
    out: list[dict[str, Any]] = []
    ref = spec.reference
    T, half = spec.iters, spec.half_iteration()
    its = spec.eval_iterations()

    def say(kind: str, scene: str, variant: str, claim: str, holds: bool | None, text: str) -> None:
        out.append({"kind": kind, "scene": scene, "variant": variant, "claim": claim, "holds": holds, "text": text})

    for scene, res in scene_items(results):
        runs = data[scene]
        for v in spec.variants:
            if v == ref:
                continue
            gap = res["quality_gap"].get(v)
            if gap is None:
                say("missing", scene, v, f"{v} vs {ref}", None,
                    f"{scene}: {v} vs {ref}: not computable yet (no seed where both finished)")
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
                             f"({fmt_num(a, key)} vs {fmt_num(b, key)})")
            if parts:
                say("half", scene, v, f"{v}@{half} >= {ref}@{T}", holds_all,
                    f"{scene}: {v}@{half} ≥ {ref}@{T} (n={len(seeds)}): " + "; ".join(parts))
            k = its.index(T)
            d, sd = gap["psnr"][k], gap["psnr_std"][k]
            if d is not None:
                say("final", scene, v, f"{v}@{T} > {ref}@{T} (PSNR)", d > 0,
                    f"{scene}: {v}@{T} − {ref}@{T} = {d:+.2f} dB PSNR"
                    + (f" (paired std {sd:.2f} over {len(seeds)} seeds)" if sd is not None else " (1 seed)"))
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
                holds = ir["value"] is not None and ir["value"] <= 0.5
                say("iteration_ratio", scene, v, "iteration_ratio <= 0.5", holds, text)
            mr = res["memory_ratio"].get(v)
            if mr is not None and mr.get("rss") is not None:
                text = f"{scene}: peak memory {v} / {ref}: RSS {mr['rss']:.2f}×"
                if mr.get("cuda") is not None:
                    text += f", CUDA {mr['cuda']:.2f}×"
                say("memory", scene, v, "memory_ratio", None, text)
        for v, g in res["curvature_gain"].items():
            if g is None:
                continue
            d, sd = g["psnr"][its.index(T)], g["psnr_std"][its.index(T)]
            if d is None:
                continue
            say("curvature", scene, v, f"{v} > {g['baseline']} (PSNR@{T})", d > 0,
                f"{scene}: curvature helps ({v} vs {g['baseline']}) at {T}: {'holds' if d > 0 else 'does not hold'} "
                f"({d:+.2f} dB PSNR" + (f", paired std {sd:.2f}" if sd is not None else "") + ")")
    return out


def fmt_num(x: float | None, key: str) -> str:
    if x is None:
        return "—"
    if key == "psnr":
        return f"{x:.2f}"
    if key in ("ssim",) or key in LOWER_IS_BETTER:
        return f"{x:.3f}"
    return f"{x:.3g}"

