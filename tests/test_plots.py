"""Training curves: curves.json holds every step once (also after a resume), curves.png at each eval,
``trsplat compare`` draws several runs and tabulates their metrics.json."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trsplat.cli import main
from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import Hook, RunDir, Trainer, resume, train
from trsplat.training.plots import (SERIES, RunCurves, _densify_shares, _panels, _smooth, comparison_table,
                                    run_colors, run_labels, truncate_steps)
from trsplat.training.trainer import default_hooks


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


def _config(scene: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(data=str(scene), out=str(out), iters=12, eval_at=[6, 12], n_random_init=300, lpips=False,
                backend="reference", checkpoint_every=4, sh_interval=4, n_saved_renders=0)
    base.update(overrides)
    return TrainConfig.make(**base)


class StepLog(Hook):
    """What the trainer gave its hooks: (iteration, loss, train PSNR, Gaussians) of each step."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, float, float, int]] = []

    def on_step(self, trainer, iteration, loss, psnr) -> None:
        self.steps.append((iteration, loss, psnr, len(trainer.gaussians)))


def _steps(run: Path) -> dict[str, list]:
    return json.loads((run / RunDir.CURVES).read_text())["steps"]


def _is_drawn_png(path: Path) -> bool:
    """A readable PNG with lines on it (not a blank canvas)."""
    image = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return image.shape[0] > 200 and image.shape[1] > 400 and float((image < 128).mean()) > 0.005


def test_every_run_writes_its_steps_and_curves(tiny_scene, tmp_path) -> None:
    log = StepLog()
    run = tmp_path / "run"
    train(_config(tiny_scene, run), hooks=[*default_hooks(), log])
    steps = _steps(run)
    assert set(steps) == set(SERIES)
    assert steps["iteration"] == list(range(1, 13))
    # the series are what the trainer reported, to the 6 significant digits stored
    np.testing.assert_allclose(steps["loss"], [s[1] for s in log.steps], rtol=1e-5)
    np.testing.assert_allclose(steps["train_psnr"], [s[2] for s in log.steps], atol=1e-3)
    assert steps["n_gaussians"] == [s[3] for s in log.steps] == [300] * 12
    seconds = steps["train_seconds"]
    assert all(b >= a for a, b in zip(seconds, seconds[1:])) and seconds[0] > 0
    evals = json.loads((run / RunDir.METRICS).read_text())["evals"]
    assert seconds[-1] == pytest.approx(evals[-1]["train_seconds"], abs=1e-4)
    assert _is_drawn_png(run / RunDir.CURVES_PLOT)


def test_curves_survive_an_interrupted_run(tiny_scene, tmp_path, monkeypatch) -> None:
    """Ctrl-C at step 7 (checkpoint there), resume: every step once, the same losses as without."""
    reference = tmp_path / "reference"
    train(_config(tiny_scene, reference))
    original = Trainer.train_step

    def step(self, it):
        if it == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, it)

    run = tmp_path / "run"
    monkeypatch.setattr(Trainer, "train_step", step)
    with pytest.raises(TrsplatError, match="interrupted at iteration 7"):
        train(_config(tiny_scene, run))
    assert _steps(run)["iteration"] == list(range(1, 8))
    monkeypatch.setattr(Trainer, "train_step", original)
    resume(run)
    got, want = _steps(run), _steps(reference)
    assert got["iteration"] == list(range(1, 13))
    assert got["loss"] == want["loss"] and got["train_psnr"] == want["train_psnr"]


def test_a_killed_run_keeps_the_steps_up_to_its_checkpoint(tiny_scene, tmp_path) -> None:
    """curves.json written after the last checkpoint (as by a kill -9 later on) is cut back to it."""
    reference = tmp_path / "reference"
    train(_config(tiny_scene, reference))
    run = tmp_path / "run"
    train(_config(tiny_scene, run, iters=8, eval_at=[8]))
    steps = _steps(run)  # 8 steps, checkpoint at 8; pretend steps 9-10 ran before a kill
    extra = {k: v + v[-2:] for k, v in steps.items()}
    extra["iteration"] = list(range(1, 11))
    RunDir(run).write_curves({"format": 1, "steps": extra})
    resume(run, {"iters": 12, "eval_at": [12]})
    assert _steps(run)["iteration"] == list(range(1, 13))
    assert _steps(run)["loss"][:8] == _steps(reference)["loss"][:8]


def test_truncate_and_smooth() -> None:
    steps = {k: list(range(1, 11)) for k in SERIES}
    assert truncate_steps(steps, 4)["loss"] == [1, 2, 3, 4]
    assert _smooth([2.0] * 1000) == pytest.approx([2.0] * 1000)
    ramp = list(np.arange(1000.0))
    smooth = _smooth(ramp)
    assert len(smooth) == 1000 and smooth[100:900] == pytest.approx(ramp[100:900])


def test_trust_region_runs_get_the_bound_panel(tiny_scene, tmp_path) -> None:
    run = tmp_path / "tr"
    train(_config(tiny_scene, run, optimizer="tr"))
    curves = RunCurves.from_run(run)
    assert ("on_bound", "iteration", "steps clipped to the trust region") in _panels([curves])
    adam = tmp_path / "adam"
    train(_config(tiny_scene, adam))
    assert not any(kind == "on_bound" for kind, _, _ in _panels([RunCurves.from_run(adam)]))
    assert _is_drawn_png(run / RunDir.CURVES_PLOT)


def test_densified_runs_get_the_refinement_panel(tiny_scene, tmp_path) -> None:
    """An MCMC run's curves show what each refinement relocated and added, as a share of the
    Gaussians after it (from metrics.json's records); a run without densification has no panel."""
    run = tmp_path / "mcmc"
    train(_config(tiny_scene, run, densify="mcmc", densify_steps_scale=1.0, densify_start=1, densify_every=2,
                  densify_stop=12, cap_max=360))
    curves = RunCurves.from_run(run)
    assert ("densify", "iteration", "share of the Gaussians per refinement") in _panels([curves])
    records = json.loads((run / RunDir.METRICS).read_text())["densify"]
    shares = _densify_shares(curves)
    assert shares["added"] == ([r["iteration"] for r in records], [r["added"] / r["after"] for r in records])
    assert sum(r["added"] for r in records) == 60  # grown from 300 to the cap, 5 % at a time
    assert _is_drawn_png(run / RunDir.CURVES_PLOT)
    adam = tmp_path / "adam"
    train(_config(tiny_scene, adam))
    assert not _densify_shares(RunCurves.from_run(adam))


def test_compare_two_optimizers(tiny_scene, tmp_path, capsys) -> None:
    runs = []
    for optimizer in ("adam", "tr"):
        runs.append(tmp_path / "runs" / optimizer)
        train(_config(tiny_scene, runs[-1], optimizer=optimizer))
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert _is_drawn_png(out / "compare.png")
    table = (out / "compare.md").read_text()
    for run in runs:
        last = json.loads((run / RunDir.METRICS).read_text())["evals"][-1]
        row = next(line for line in table.splitlines() if line.startswith(f"| {run.name} |"))
        assert f"| {last['psnr']:.2f} |" in row and f"| {last['ssim']:.4f} |" in row
        assert row in printed
    assert "| tr (hutchinson) |" in table and "| 6 |" in table  # the PSNR-per-eval table has iteration 6


def test_compare_errors_are_one_line(tiny_scene, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    for argv, words in ((["compare", str(tmp_path / "nope")], "no such run folder"),
                        (["compare", str(tmp_path / "empty")], "no metrics.json")):
        assert main([*argv, "--out", str(tmp_path / "cmp")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("trsplat: error:") and words in err and err.count("\n") == 1


def test_labels_and_colours() -> None:
    assert run_labels([Path("a/run"), Path("b/run"), Path("c/other")]) == ["a/run", "b/run", "other"]
    adam, tr, tr2 = (RunCurves("x", optimizer="adam"), RunCurves("y", optimizer="tr", curvature="hutchinson"),
                     RunCurves("z", optimizer="tr", curvature="hutchinson"))
    assert run_colors([adam, tr]) == ["black", "#d62728"]
    colors = run_colors([adam, tr, tr2])
    assert colors[0] == "black" and len(set(colors)) == 3  # two of a kind get colours of their own


def test_table_marks_unfinished_runs() -> None:
    run = RunCurves("a", evals=[{"iteration": 5, "psnr": 20.0, "ssim": 0.5, "train_seconds": 1.0}],
                    optimizer="adam")
    assert "| 5 (unfinished) | 20.00 | 0.5000 | – |" in comparison_table([run])
