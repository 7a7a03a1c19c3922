"""``trsplat bench optimizers``: the command line of the optimizer study (docs/optimizer_study.md)."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any

from trsplat.bench.datasets import DATA_ENV
from trsplat.machine import machine_info, now, usable_cores
from trsplat.bench.study.report import aggregate
from trsplat.bench.study.runner import StudyInterrupted, ensure_scenes, execute, plan_runs
from trsplat.bench.study.spec import (FAILURES_FILE, INVOCATIONS_FILE, PRESETS, RUN_KEYS, STUDY_FILE, StudySpec,
                                      check_overrides, echo, load_spec, read_json)
from trsplat.errors import TrsplatError
from trsplat.io_utils import write_json


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [x.strip() for x in text.split(",") if x.strip()]


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
    """The command as typed, from the parsed options (what ``invocations.json`` and the report quote)."""
    parts = ["trsplat", "bench", "optimizers", "--out", str(args.out)]
    options = [("--preset", args.preset), ("--spec", args.spec), ("--iters", args.iters), ("--seeds", args.seeds),
               ("--scenes", args.scenes), ("--variants", args.variants), ("--eval-fraction", args.eval_fraction),
               ("--data-root", args.data_root), *(("--set", item) for item in args.set or []),
               ("--jobs", None if args.jobs == 1 else args.jobs), ("--threads", args.threads)]
    for flag, value in options:
        if value is not None:
            parts += [flag, str(value)]
    parts += [flag for flag, on in (("--no-isolate", not args.isolate), ("--only-aggregate", args.only_aggregate),
                                    ("--no-plots", not args.plots)) if on]
    return shlex.join(parts)


def resolve_spec(args: argparse.Namespace) -> StudySpec:
    """The full study (preset/spec/``OUT/study.json`` with --iters/--seeds/--set applied).

    ``--seeds`` names the seeds to run now; seeds the study does not have yet are added to it, so
    running one seed at a time never shrinks the study (or its report) to that seed.
    """
    out = Path(args.out)
    if args.preset is None and args.spec is None and (out / STUDY_FILE).is_file():
        spec = StudySpec.from_dict(read_json(out / STUDY_FILE), source=str(out / STUDY_FILE),
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
        check_overrides(extra, "--set", forbidden=RUN_KEYS)
        for key in extra:  # a variant's own options are what the study compares: not overridable here
            defining = sorted(v for v, variant in spec.variants.items() if key in variant.overrides)
            if defining:
                raise TrsplatError(f"--set {key}: the variants {', '.join(defining)} set it themselves; "
                                   "change it in a spec file (--spec)")
        spec.common.update(extra)
        for scene in spec.scenes.values():  # the command line wins over the scenes' options (e.g. cap_max)
            scene.options.update({k: v for k, v in extra.items() if k in scene.options})
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
                        help="TrainConfig option for every run, e.g. --set backend=cpu (repeatable); it replaces "
                             "the scenes' own value (e.g. cap_max) and may not name an option a variant sets")
    parser.add_argument("--data-root", default=None,
                        help=f"folder of the preset datasets (default: ${DATA_ENV})")
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
        echo(f"{len(tasks)} runs: {n['skip']} finished (skipped), {n['resume']} to resume, {n['start']} to start")
        if n["resume"] or n["start"]:
            needed = [sc for sc in selected.scenes if any(t.scene == sc and t.action != "skip" for t in tasks)]
            ensure_scenes(selected.select(scenes=needed), out)
            threads = args.threads
            if threads is None and args.jobs > 1:
                threads = max(1, (usable_cores() or 1) // args.jobs)
            invocations = read_json(out / INVOCATIONS_FILE) or []
            invocations.append({"date": now(), "command": command, "machine": machine_info(threads=False),
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
