"""Hostile input: every bad option, run folder or output path ends in one line naming the problem.

Each case asserts a non-zero exit, exactly one ``trsplat: error:`` line on stderr that names the
file or option, no traceback, and no temporary or partial file left behind.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

from trsplat.cli import main
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import RunDir

QUICK = ["--iters", "4", "--n-random-init", "200", "--no-lpips", "--backend", "reference"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


@pytest.fixture(scope="module")
def finished_run(scene, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "done"
    assert main(["train", str(scene), "--out", str(run), *QUICK]) == 0
    return run


def _one_line_error(capsys, code: int, *names: str) -> str:
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("trsplat: error:")]
    assert code != 0, err
    assert len(lines) == 1 and "Traceback" not in err, err
    for name in names:
        assert name in lines[0], (name, lines[0])
    return lines[0]


def _no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*.tmp")], list(folder.rglob(".*.tmp"))


@pytest.mark.parametrize("extra, name", [
    (["--sh-interval", "0"], "--sh-interval"),
    (["--seed", str(2**64)], "--seed"),
    (["--seed", "-1"], "--seed"),
    (["--lr-means", "0"], "--lr-means"),
    (["--lr-means-final=-1e-6"], "--lr-means-final"),
    (["--iters", "ten"], "--iters"),
    (["--no-such-option"], "--no-such-option"),
    (["--eps-start", "nan"], "--eps-start"),
    (["--eps-end", "inf"], "--eps-end"),
    (["--adam-eps", "0"], "--adam-eps"),
    (["--llffhold", "0"], "--llffhold"),
    (["--max-test-views", "0"], "--max-test-views"),
    (["--backend", "cuda"], "--backend"),
    (["--backend", "metal"], "--backend"),
    (["--densify", "sometimes"], "--densify"),
    (["--iters", "-5"], "--iters"),
    (["--eval-at", "0"], "--eval-at"),
    (["--theta2", "1"], "--theta2"),
    (["--n-probes", "0"], "--n-probes"),
    (["--guard", "none"], "--guard"),
    (["--n-random-init", "10000000000000"], "--n-random-init"),
    (["--tr-mass-clamp", "a,b"], "--tr-mass-clamp"),
    (["--tr-bounds", "loose"], "--tr-bounds"),
])
def test_bad_options(scene, tmp_path, capsys, extra, name) -> None:
    args = ["train", str(scene), "--out", str(tmp_path / "run"), *QUICK, *extra]
    _one_line_error(capsys, main(args), name)
    assert not (tmp_path / "run" / RunDir.CHECKPOINT).exists()
    _no_temporaries(tmp_path)


def test_output_paths(scene, finished_run, tmp_path, capsys) -> None:
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["train", str(scene), "--out", str(a_file), *QUICK], str(a_file)),
        (["train", str(scene), "--out", str(a_file / "run"), *QUICK], str(a_file)),
        (["make-scene", str(a_file)], str(a_file)),
        (["make-scene", str(tmp_path / "s"), "--size", "0"], "--size"),
        (["make-scene", str(tmp_path / "s"), "--size", "-3"], "--size"),
        (["export", str(finished_run), "--out", str(tmp_path)], str(tmp_path)),
        (["render", str(finished_run), "--out", str(a_file), "--backend", "reference"], str(a_file)),
        (["render", str(finished_run), "--views", "99", "--backend", "reference"], "--views"),
    ]
    for argv, name in cases:
        _one_line_error(capsys, main(argv), name)
    assert a_file.read_text() == "x"
    _no_temporaries(tmp_path)


def _damage(run: Path, how: str) -> None:
    config = run / RunDir.CONFIG
    if how == "missing config":
        config.unlink()
    elif how == "corrupt config":
        config.write_text("{not json")
    elif how == "wrong type":
        config.write_text(json.dumps({**json.loads(config.read_text()), "iters": "ten"}))
    elif how == "unknown key":
        config.write_text(json.dumps({**json.loads(config.read_text()), "colour": "blue"}))
    elif how == "missing checkpoint":
        (run / RunDir.CHECKPOINT).unlink()
    elif how == "corrupt checkpoint":
        (run / RunDir.CHECKPOINT).write_bytes(b"\x00garbage")


@pytest.mark.parametrize("how, name", [
    ("missing config", "config.json"), ("corrupt config", "config.json"), ("wrong type", "--iters"),
    ("unknown key", "colour"), ("missing checkpoint", "checkpoint.pt"), ("corrupt checkpoint", "checkpoint.pt"),
])
@pytest.mark.parametrize("command", ["resume", "eval", "render", "export"])
def test_bad_run_folders(finished_run, tmp_path, capsys, how, name, command) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for f in finished_run.iterdir():
        if f.is_file():
            (run / f.name).write_bytes(f.read_bytes())
    _damage(run, how)
    argv = {"resume": ["train", "--resume", str(run)], "eval": ["eval", str(run), "--no-lpips"],
            "render": ["render", str(run), "--views", "0"], "export": ["export", str(run), "--out", str(tmp_path / "x.ply")]}
    _one_line_error(capsys, main(argv[command]), name)
    _no_temporaries(tmp_path)


def test_two_trainings_cannot_share_a_folder(scene, tmp_path, capsys) -> None:
    run = RunDir(tmp_path / "run")
    with run.locked():  # as another process training there
        _one_line_error(capsys, main(["train", str(scene), "--out", str(run.path), *QUICK]), str(run.path), "another")
    assert main(["train", str(scene), "--out", str(run.path), *QUICK]) == 0
    _one_line_error(capsys, main(["train", str(scene), "--out", str(run.path), *QUICK]), "--resume")


def test_resume_refuses_changes_it_cannot_make(finished_run, scene, tmp_path, capsys) -> None:
    for argv, name in [(["train", "--resume", str(finished_run), "--optimizer", "tr"], "--optimizer"),
                       (["train", str(scene), "--resume", str(finished_run)], "DATA"),
                       (["train", "--resume", str(finished_run), "--out", str(tmp_path)], "--out"),
                       (["train", "--resume", str(finished_run), "--iters", "2"], "--iters"),
                       (["train", "--resume", str(finished_run), "--recipe", "paper"], "--recipe")]:
        _one_line_error(capsys, main(argv), name)


def test_resume_extends_a_finished_run(scene, tmp_path) -> None:
    run = tmp_path / "run"
    assert main(["train", str(scene), "--out", str(run), *QUICK]) == 0
    assert main(["train", "--resume", str(run), "--iters", "6", "--eval-at", "5"]) == 0
    metrics = json.loads((run / RunDir.METRICS).read_text())
    assert [e["iteration"] for e in metrics["evals"]] == [2, 4, 5, 6] and metrics["finished"]
    assert metrics["config"]["iters"] == 6


def test_full_disk_keeps_the_previous_checkpoint(scene, tmp_path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"
    real_replace = os.replace
    calls = {"checkpoints": 0}

    def replace(src, dst):
        if str(dst).endswith(RunDir.CHECKPOINT):
            calls["checkpoints"] += 1
            if calls["checkpoints"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    code = main(["train", str(scene), "--out", str(run), *QUICK, "--checkpoint-every", "1", "--eval-at", "4"])
    _one_line_error(capsys, code, "checkpoint.pt", "disk is full")
    assert torch.load(run / RunDir.CHECKPOINT, weights_only=False)["iteration"] == 1
    _no_temporaries(tmp_path)


X10K_LEARNING_RATES = ["--lr-means", "1.6", "--lr-means-final", "0.016", "--lr-sh-dc", "25", "--lr-sh-rest", "1.25",
                      "--lr-opacity", "250", "--lr-scale", "50", "--lr-rotation", "10"]


@pytest.mark.parametrize("extra", [["--recipe", "none", *X10K_LEARNING_RATES],  # Adam, whose learning rates these are
                                   ["--optimizer", "tr", "--eps-start", "1e2", "--eps-end", "1e2"]])
def test_divergence_stops_without_a_finished_run(scene, tmp_path, capsys, extra) -> None:
    run = tmp_path / "run"
    code = main(["train", str(scene), "--out", str(run), "--iters", "200", "--eval-at", "50",
                 "--n-random-init", "200", "--no-lpips", "--backend", "reference", *extra])
    line = _one_line_error(capsys, code, "diverged")
    metrics = json.loads((run / RunDir.METRICS).read_text()) if (run / RunDir.METRICS).exists() else {}
    assert not metrics.get("finished") and not (run / RunDir.PLY).exists()
    if (run / RunDir.CHECKPOINT).exists():  # the message points at a checkpoint that exists and is finite
        ckpt = torch.load(run / RunDir.CHECKPOINT, weights_only=False)
        assert all(bool(torch.isfinite(t).all()) for t in ckpt["params"].values())
        assert f"iteration {ckpt['iteration']}" in line
    else:
        assert "no checkpoint" in line
