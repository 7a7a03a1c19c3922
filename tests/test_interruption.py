"""Kill a training process at many moments (SIGKILL, SIGINT, SIGTERM), resume it, and get the same
final metrics and a byte-identical PLY; every file in the run folder is readable at every moment."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from trsplat.gaussians import load_ply
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import RunDir

ARGS = ["--iters", "24", "--eval-at", "8,16", "--n-random-init", "300", "--no-lpips", "--backend", "reference",
        "--checkpoint-every", "1", "--sh-interval", "6", "--n-saved-renders", "2"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


def _trsplat(*argv: str) -> subprocess.Popen:
    code = "import sys; from trsplat.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def _check_readable(run: Path) -> None:
    """Every file that exists is complete (atomic writes): parse each by its kind."""
    for path in run.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        try:
            if path.suffix == ".json":
                json.loads(path.read_text())
            elif path.suffix == ".pt":
                torch.load(path, weights_only=False)
            elif path.suffix == ".png":
                Image.open(path).load()
            elif path.suffix == ".ply":
                load_ply(path)
        except FileNotFoundError:  # replaced between listing and reading: the new one is checked next time
            continue


def _run_and_watch(proc: subprocess.Popen, run: Path, kill_after: float | None, sig: int) -> int:
    start = time.monotonic()
    while proc.poll() is None:
        _check_readable(run)
        if kill_after is not None and time.monotonic() - start > kill_after:
            proc.send_signal(sig)
            kill_after = None
        time.sleep(0.02)
    _check_readable(run)
    return proc.wait()


def _final(run: Path) -> tuple[list, bytes]:
    evals = json.loads((run / RunDir.METRICS).read_text())["evals"]
    return [(e["iteration"], e["psnr"], e["ssim"]) for e in evals], (run / RunDir.PLY).read_bytes()


def test_killed_runs_resume_to_the_same_result(scene, tmp_path) -> None:
    reference = tmp_path / "reference"
    start = time.monotonic()
    assert _run_and_watch(_trsplat("train", str(scene), "--out", str(reference), *ARGS), reference, None, 0) == 0
    duration = time.monotonic() - start
    want = _final(reference)
    # kills spread over the run (start-up included), so they land in iterations, checkpoint writes
    # and evaluations
    scenarios = [(signal.SIGKILL, f) for f in (0.35, 0.5, 0.65, 0.8)] + [(signal.SIGINT, 0.55), (signal.SIGTERM, 0.7)]
    interrupted = 0
    for k, (sig, fraction) in enumerate(scenarios):
        run = tmp_path / f"run{k}"
        for attempt in range(4):  # a run that finished before its signal (the machine sped up): earlier
            code = _run_and_watch(_trsplat("train", str(scene), "--out", str(run), *ARGS), run, fraction * duration, sig)
            if code != 0 or attempt == 3:
                break
            shutil.rmtree(run)
            fraction *= 0.6
        interrupted += code != 0
        for _ in range(3):  # killed before its first checkpoint: start again; otherwise resume
            if code == 0:
                break
            argv = ("train", "--resume", str(run)) if (run / RunDir.CHECKPOINT).exists() else \
                ("train", str(scene), "--out", str(run), *ARGS)
            code = _run_and_watch(_trsplat(*argv), run, None, 0)
        assert code == 0, (sig, fraction)
        assert _final(run) == want, (sig, fraction)
        assert not list(run.rglob(".*.tmp"))
    assert interrupted == len(scenarios)


def _train_under(script: str, scene: Path, run: Path) -> subprocess.CompletedProcess:
    """``trsplat train`` on ``scene`` into ``run`` in a subprocess that runs ``script`` (which patches
    the process and then calls ``main``) with the train arguments in ``sys.argv``."""
    return subprocess.run([sys.executable, "-c", script, "train", str(scene), "--out", str(run), *ARGS],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


_SIGTERM_AFTER_THE_LOOP = """
import os, signal, sys
from trsplat.cli import main
from trsplat.errors import TrsplatError
from trsplat.training import trainer
from trsplat.training.hooks import Hook

class FailThenSigterm(Hook):
    # the loop stops with an error; the launcher's SIGTERM lands after the loop removed its handler
    def on_step(self, trainer, iteration, loss, psnr):
        if iteration == 2:
            raise TrsplatError("lost the other process")
    def on_close(self, trainer):
        os.kill(os.getpid(), signal.SIGTERM)

trainer.default_hooks = lambda: [FailThenSigterm()]
sys.exit(main(sys.argv[1:]))
"""

_SIGTERM_BEFORE_TRAINING = """
import os, signal, sys
from trsplat import cli

train = cli._train
def sigterm_first(args, world):
    os.kill(os.getpid(), signal.SIGTERM)
    return train(args, world)

cli._train = sigterm_first
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_sigterm_after_the_loop_stopped_with_an_error_still_gets_the_error_line(scene, tmp_path) -> None:
    """torchrun SIGTERMs the survivors when a process is lost; one that lands between the loop's end
    and the printed error must not swallow the line (it used to end the process silently)."""
    proc = _train_under(_SIGTERM_AFTER_THE_LOOP, scene, tmp_path / "run")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == "trsplat: error: lost the other process"


def test_a_sigterm_before_training_is_a_one_line_error(scene, tmp_path) -> None:
    proc = _train_under(_SIGTERM_BEFORE_TRAINING, scene, tmp_path / "run")
    assert (proc.returncode, proc.stderr.strip()) == (2, "trsplat: error: stopped by SIGTERM")
