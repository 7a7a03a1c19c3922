"""Running a study: plan every run of the grid, then train what is not finished.

Running is resumable: a finished run (last eval at ``iters`` and ``point_cloud.ply`` present, see
:meth:`RunDir.status`) is skipped, an interrupted one (``checkpoint.pt`` present) is resumed, a
missing one is started; a run folder whose ``config.json`` differs from what the spec asks for is
an error, never silently mixed in. Each run executes in its own Python process
(``python -m trsplat.bench.study.runner --worker``, so ``peak_rss_bytes`` is that run's peak);
``--jobs N`` runs N at once with ``cores // N`` torch/numba threads each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trsplat.machine import now
from trsplat.bench.datasets import DATA_ENV
from trsplat.bench.study.spec import FAILURES_FILE, StudySpec, echo, read_json, run_dir, run_metrics
from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError
from trsplat.io_utils import write_json
from trsplat.training import RunDir


def config_differences(stored: TrainConfig, wanted: TrainConfig) -> list[str]:
    """Options (leaf names) in which a run folder's config differs from ``wanted`` (``out`` ignored)."""
    have = stored.flat()
    diffs = []
    for key, value in wanted.flat().items():
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
                state = RunDir(path).status(spec.iters)
                if state != "missing":
                    try:
                        diffs = config_differences(RunDir(path).read_config(), cfg)
                    except TrsplatError as exc:
                        diffs = [str(exc)]
                    if diffs:
                        raise TrsplatError(
                            f"{path} was trained with another configuration ({'; '.join(diffs[:4])}"
                            f"{'; ...' if len(diffs) > 4 else ''}); delete that folder or use another --out")
                action = {"finished": "skip", "interrupted": "resume", "missing": "start"}[state]
                tasks.append(Task(scene, variant, seed, path, cfg, action))
    return tasks


def ensure_scenes(spec: StudySpec, out_dir: str | Path, log: Callable[[str], None] = echo) -> None:
    """Generate missing synthetic scenes (atomically: into a temporary folder, then renamed);
    check that the other scene folders exist."""
    for name, scene in spec.scenes.items():
        path = spec.scene_path(name, out_dir)
        if scene.generate is None:
            if not path.exists():
                raise TrsplatError(f"scene {name!r}: {path} does not exist (set its path in the spec, "
                                   f"or --data-root / ${DATA_ENV} for the presets)")
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
    cmd = [sys.executable, "-m", "trsplat.bench.study.runner", "--worker"]
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
    evals = run_metrics(path).get("evals") or []
    if not evals:
        return ""
    last = max(evals, key=lambda e: e.get("iteration", 0))
    return (f"iter {last.get('iteration')}: PSNR {last.get('psnr', float('nan')):.2f}, "
            f"{last.get('seconds_per_iteration', float('nan')):.3f} s/it")


class StudyInterrupted(Exception):
    """Ctrl-C / SIGTERM during the study: runs have saved their checkpoints."""


def execute(tasks: list[Task], out_dir: str | Path, *, jobs: int = 1, threads: int | None = None,
            isolate: bool = True, log: Callable[[str], None] = echo) -> dict[str, str]:
    """Run the ``start``/``resume`` tasks; returns ``{task.key: "ok" | error message}``.

    ``isolate``: each run in its own process (``python -m trsplat.bench.study.runner --worker``),
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
        failures = read_json(failures_path) or {}
        if outcome == "ok":
            failures.pop(task.key, None)
        else:
            failures[task.key] = {"error": outcome, "date": now()}
        write_json(failures_path, failures)

    total = len(todo)
    if not isolate:
        from trsplat import training

        for k, task in enumerate(todo, 1):
            log(f"[{k}/{total}] {task.action} {task.key}")
            t0 = time.perf_counter()
            try:
                if task.action == "resume":
                    training.resume(task.path)
                else:
                    training.train(task.config)
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

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM as Ctrl-C
    try:
        while queue or running:
            while queue and len(running) < jobs:
                k, task = queue.pop(0)
                log_file = _log_path(out_dir, task)
                log_file.parent.mkdir(parents=True, exist_ok=True)
                fh = open(log_file, "a")
                fh.write(f"\n=== {now()} {task.action} {task.key}\n")
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


def _worker_main(argv: list[str]) -> int:
    """``python -m trsplat.bench.study.runner --worker start CONFIG_JSON | resume DIR``."""
    threads = os.environ.get("TRSPLAT_BENCH_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    from trsplat.training import resume, train

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


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "--worker":
        sys.exit(_worker_main(sys.argv[2:]))
