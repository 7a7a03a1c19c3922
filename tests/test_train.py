"""End-to-end training runs on a tiny synthetic scene: outputs, resume, CLI errors."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from trsplat.machine import machine_label
from trsplat.cli import main
from trsplat.config import TrainConfig
from trsplat.gaussians import load_ply
from trsplat.synthetic import make_synthetic_scene
from trsplat.strategy import Strategy, ops
from trsplat.training import Hook, RunDir, Trainer, resume, train


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


def _config(scene: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(data=str(scene), out=str(out), iters=12, eval_at=[6, 12], n_random_init=300, lpips=False,
                backend="reference", checkpoint_every=4, sh_interval=4, n_saved_renders=1)
    base.update(overrides)
    return TrainConfig.make(**base)


def test_train_writes_all_outputs(tiny_scene, tmp_path) -> None:
    metrics = train(_config(tiny_scene, tmp_path / "run"))
    run = tmp_path / "run"
    assert [e["iteration"] for e in metrics["evals"]] == [6, 12]
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk["n_gaussians"] == 300 and on_disk["scene"]
    assert on_disk["finished"] is True  # recorded once the PLY is written
    for key in ("psnr", "ssim", "train_seconds", "peak_rss_bytes", "peak_cuda_bytes"):
        assert key in on_disk["evals"][-1]
    assert 0 < on_disk["evals"][-1]["n_alive"] <= 300
    assert on_disk["evals"][-1]["machine"] == machine_label("cpu")  # what the train seconds were timed on
    assert on_disk["evals"][1]["train_seconds"] >= on_disk["evals"][0]["train_seconds"] > 0
    assert len(load_ply(run / "point_cloud.ply")) == 300
    assert len(list((run / "renders" / "iter_12").glob("*.png"))) == 1
    assert not list(run.glob(".*.tmp"))  # atomic writes leave no temporaries


def _interrupt_at(monkeypatch, iteration: int) -> None:
    """Send ourselves SIGINT (Ctrl-C) in the middle of ``iteration``."""
    original = Trainer.train_step

    def step(self, it):
        if it == iteration:
            os.kill(os.getpid(), signal.SIGINT)
        return original(self, it)

    monkeypatch.setattr(Trainer, "train_step", step)


@pytest.mark.parametrize("optimizer", ["adam", "tr", "adam-tr"])
def test_interrupted_run_resumes_to_the_same_result(tiny_scene, tmp_path, monkeypatch, optimizer) -> None:
    extra = dict(optimizer=optimizer, curvature_interval=3, eps_start=1e-4, eps_end=1e-6)
    train(_config(tiny_scene, tmp_path / "full", **extra))
    with monkeypatch.context() as m:
        _interrupt_at(m, 9)
        with pytest.raises(Exception, match="interrupted at iteration 9"):
            train(_config(tiny_scene, tmp_path / "split", **extra))
    assert torch.load(tmp_path / "split" / RunDir.CHECKPOINT, weights_only=False)["iteration"] == 9
    monkeypatch.setattr("trsplat.training.trainer.peak_rss_bytes", lambda: 1)  # as a fresh process peaking lower
    resume(tmp_path / "split")
    full = torch.load(tmp_path / "full" / RunDir.CHECKPOINT, weights_only=False)
    split = torch.load(tmp_path / "split" / RunDir.CHECKPOINT, weights_only=False)
    for name, tensor in full["params"].items():
        assert torch.equal(tensor, split["params"][name]), name
    m_full = json.loads((tmp_path / "full" / "metrics.json").read_text())["evals"]
    m_split = json.loads((tmp_path / "split" / "metrics.json").read_text())["evals"]
    assert [e["psnr"] for e in m_full] == [e["psnr"] for e in m_split]
    # the peak memory of a run spans its resumes: the eval after the resume keeps the earlier peak
    assert m_split[-1]["peak_rss_bytes"] == m_split[0]["peak_rss_bytes"] > 1


def test_cli_train_eval_render_export(tiny_scene, tmp_path, capsys) -> None:
    run = tmp_path / "cli"
    assert main(["train", str(tiny_scene), "--out", str(run), "--iters", "4", "--eval-at", "4",
                 "--n-random-init", "200", "--no-lpips", "--backend", "reference"]) == 0
    assert main(["eval", str(run), "--no-lpips", "--backend", "reference"]) == 0
    evaluated = json.loads((run / "eval.json").read_text())
    recorded = json.loads((run / "metrics.json").read_text())["evals"][-1]
    assert evaluated["psnr"] == pytest.approx(recorded["psnr"], abs=1e-6)
    assert main(["render", str(run), "--views", "0,1", "--out", str(tmp_path / "r"), "--backend", "reference"]) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["000.png", "001.png"]
    assert main(["export", str(run), "--out", str(tmp_path / "x.ply")]) == 0
    assert len(load_ply(tmp_path / "x.ply")) == 200


@pytest.mark.parametrize("argv, message", [
    (["train", "/nonexistent/scene", "--out", "OUT"], "/nonexistent/scene"),
    (["train", "SCENE", "--out", "OUT", "--iters", "0"], "--iters"),
    (["train", "SCENE", "--out", "OUT", "--iters", "10", "--eval-at", "20"], "--eval-at"),
    (["train", "SCENE", "--out", "OUT", "--optimizer", "sgd"], "--optimizer"),
    (["train", "SCENE", "--out", "OUT", "--downscale", "0.5"], "--downscale"),
    (["train", "SCENE", "--out", "OUT", "--curvature", "exact"], "--curvature"),
    (["train", "SCENE", "--out", "OUT", "--tr-mass-clamp", "1"], "--tr-mass-clamp"),
    (["train", "SCENE", "--out", "OUT", "--step-norm-quantile", "1.5"], "--step-norm-quantile"),
    (["train", "--resume", "/nonexistent/run"], "/nonexistent/run"),
    (["eval", "/nonexistent/run"], "/nonexistent/run"),
])
def test_cli_errors_are_one_line(tiny_scene, tmp_path, capsys, argv, message) -> None:
    argv = [a.replace("SCENE", str(tiny_scene)).replace("OUT", str(tmp_path / "o")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trsplat: error:") and message in err and "\n" not in err


def test_existing_run_is_not_overwritten(tiny_scene, tmp_path, capsys) -> None:
    args = ["train", str(tiny_scene), "--out", str(tmp_path / "o"), "--iters", "2", "--eval-at", "2",
            "--n-random-init", "50", "--no-lpips", "--backend", "reference"]
    assert main(args) == 0
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err


class _Recorder(Hook):
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_start(self, trainer) -> None:
        self.calls.append(("start", trainer.state.iteration))

    def on_step(self, trainer, iteration, loss, psnr) -> None:
        self.calls.append(("step", iteration))

    def on_eval(self, trainer, record) -> None:
        self.calls.append(("eval", record["iteration"]))

    def on_finish(self, trainer, metrics) -> None:
        self.calls.append(("finish", metrics["finished"]))

    def on_close(self, trainer) -> None:
        self.calls.append(("close",))


class _PruneOnce(Strategy):
    """Drops every third Gaussian at iteration 5 and counts its calls (saved for resume)."""

    def __init__(self) -> None:
        self.calls = 0

    def step_post_backward(self, gaussians, optimizer, info) -> None:
        self.calls += 1
        assert len(info.renders) == len(info.view_ids) == 1 and info.renders[0].radii.shape == (len(gaussians),)
        if info.iteration == 5:
            ops.select(gaussians, optimizer, torch.arange(len(gaussians)) % 3 != 0)

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state) -> None:
        self.calls = state["calls"]


def test_hook_points_are_called_in_order(tiny_scene, tmp_path) -> None:
    recorder = _Recorder()
    train(_config(tiny_scene, tmp_path / "run", iters=6, eval_at=[3]), hooks=[recorder])
    assert recorder.calls == ([("start", 0)] + [("step", i) for i in (1, 2, 3)] + [("eval", 3)]
                              + [("step", i) for i in (4, 5, 6)] + [("eval", 6), ("close",), ("finish", True)])


@pytest.mark.parametrize("optimizer", ["adam", "tr", "adam-tr"])
def test_resume_is_bit_identical_across_a_strategy_change(tiny_scene, tmp_path, monkeypatch, optimizer) -> None:
    extra = dict(optimizer=optimizer, curvature_interval=3, eps_start=1e-4, eps_end=1e-6)
    train(_config(tiny_scene, tmp_path / "full", **extra), strategy=_PruneOnce())
    with monkeypatch.context() as m:
        _interrupt_at(m, 9)
        with pytest.raises(Exception, match="interrupted at iteration 9"):
            train(_config(tiny_scene, tmp_path / "split", **extra), strategy=_PruneOnce())
    strategy = _PruneOnce()
    resume(tmp_path / "split", strategy=strategy)
    assert strategy.calls == 12
    full = torch.load(tmp_path / "full" / RunDir.CHECKPOINT, weights_only=False)
    split = torch.load(tmp_path / "split" / RunDir.CHECKPOINT, weights_only=False)
    assert full["params"]["means"].shape[0] == 200  # 300 minus every third
    for name, tensor in full["params"].items():
        assert torch.equal(tensor, split["params"][name]), name
    assert len(load_ply(tmp_path / "split" / "point_cloud.ply")) == 200


def test_checkpoint_of_an_earlier_format_is_refused_in_one_line(tiny_scene, tmp_path, capsys) -> None:
    run = tmp_path / "old"
    train(_config(tiny_scene, run, iters=4, eval_at=[4]))
    ckpt = torch.load(run / RunDir.CHECKPOINT, weights_only=False)
    ckpt.pop("format")  # what trsplat wrote before checkpoint format 2
    torch.save(ckpt, run / RunDir.CHECKPOINT)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip()
    assert "earlier trsplat" in err and str(run) in err and "\n" not in err
    assert main(["export", str(run), "--out", str(tmp_path / "old.ply")]) == 0  # its parameters still serve
