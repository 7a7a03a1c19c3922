"""Data-parallel training under torchrun (gloo, 2 processes on this machine) against one process
with the same ``--batch-views``: same parameters, resume across process counts, clean stops."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from trsplat.config import TrainConfig
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import RunDir, close_world, init_world, resume, train
from trsplat.training.batching import batch_rules

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="this torch build has no torch.distributed gloo backend")

ITERS = 8


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=3)


def _options(scene: Path, out: Path, optimizer: str, iters: int = ITERS, **extra) -> dict:
    return dict(data=str(scene), out=str(out), iters=iters, eval_at=[iters // 2, iters], n_random_init=400,
                lpips=False, checkpoint_every=4, sh_interval=3, n_saved_renders=2, optimizer=optimizer,
                batch_views=2, curvature_interval=2, eps_start=1e-4, eps_end=1e-6, seed=3) | extra


def _argv(options: dict) -> list[str]:
    argv = [options.pop("data"), "--recipe", "none"]  # as the one-process twin: TrainConfig's own defaults
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + key.replace("_", "-"))
        else:
            argv += [flag, ",".join(map(str, value)) if isinstance(value, list) else str(value)]
    return argv


def _torchrun(args: list[str], nproc: int = 2, **popen) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "trsplat", "train", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _params(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / RunDir.CHECKPOINT, weights_only=False)["params"]


def _assert_same_params(a: Path, b: Path) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name], pb[name], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def _run_one_process(options: dict) -> dict:
    return train(TrainConfig.make(**options), hooks=[])


@pytest.mark.parametrize("optimizer", ["adam", "adam-tr", "tr"])
def test_two_processes_equal_one_process_with_two_views_per_step(scene, tmp_path, optimizer) -> None:
    proc = _torchrun(_argv(_options(scene, tmp_path / "two", optimizer)))
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    one = _run_one_process(_options(scene, tmp_path / "one", optimizer))
    _assert_same_params(tmp_path / "one", tmp_path / "two")
    two = json.loads((tmp_path / "two" / RunDir.METRICS).read_text())
    for a, b in zip(one["evals"], two["evals"]):  # evaluation split over the ranks, gathered on rank 0
        assert a["iteration"] == b["iteration"] and abs(a["psnr"] - b["psnr"]) < 1e-3
    assert len(list((tmp_path / "two" / "renders" / f"iter_{ITERS}").glob("*.png"))) == 2
    assert json.loads(out.strip().splitlines()[-1])["iteration"] == ITERS  # rank 0 alone prints the result


@pytest.mark.parametrize("densify", ["adc", "mcmc"])
def test_densification_decisions_are_the_same_on_every_rank(scene, tmp_path, densify) -> None:
    # refine every 2 steps from step 2, with a low threshold so that ADC clones and splits
    options = _options(scene, tmp_path / "two", "adam", densify=densify, densify_start=1, densify_every=2,
                       densify_steps_scale=1.0, densify_grad_threshold=1e-7, cap_max=600)
    proc = _torchrun(_argv(dict(options)))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    _run_one_process(options | {"out": str(tmp_path / "one")})
    _assert_same_params(tmp_path / "one", tmp_path / "two")
    assert len(_params(tmp_path / "two")["means"]) > 400  # the strategy did add Gaussians


def test_resume_from_two_processes_into_one(scene, tmp_path) -> None:
    # adam: its schedules do not depend on --iters, which the resume extends
    proc = _torchrun(_argv(_options(scene, tmp_path / "split", "adam", iters=4)))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "split" / RunDir.CONFIG).read_text())["batch_views"] == 2
    resume(tmp_path / "split", {"iters": ITERS, "eval_at": [ITERS]}, hooks=[])
    _run_one_process(_options(scene, tmp_path / "one", "adam"))
    _assert_same_params(tmp_path / "one", tmp_path / "split")


def test_default_batch_is_one_view_per_process(scene, tmp_path) -> None:
    options = _options(scene, tmp_path / "run", "adam", iters=2)
    del options["batch_views"]
    proc = _torchrun(_argv(options))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    assert json.loads((tmp_path / "run" / RunDir.CONFIG).read_text())["batch_views"] == 2


def _children(pid: int) -> dict[int, int]:
    """rank -> pid of the training processes torchrun started."""
    ranks = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            rank = next((int(e.split(b"=")[1]) for e in env if e.startswith(b"RANK=")), None)
            if rank is not None:
                ranks[rank] = int(entry.name)
    return ranks


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (run / RunDir.CHECKPOINT).is_file():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.2)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("trsplat: error:")]


@pytest.mark.parametrize("how", ["kill rank 1", "ctrl-c"])
def test_a_lost_rank_or_ctrl_c_stops_every_rank_with_a_checkpoint(scene, tmp_path, how) -> None:
    run = tmp_path / "run"
    proc = _torchrun(_argv(_options(scene, run, "adam", iters=100_000, checkpoint_every=3) | {"eval_at": [100_000]}),
                     start_new_session=True)
    _wait_for_checkpoint(run, proc)
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal sends to the whole group
    else:
        os.kill(_children(proc.pid)[1], signal.SIGKILL)
    _, err = proc.communicate(timeout=120)  # never a hang
    assert proc.returncode != 0
    errors = _error_lines(err)
    assert errors, err[-3000:]
    assert "Traceback" not in "\n".join(line for line in err.splitlines() if "[rank" in line)
    if how == "ctrl-c":
        assert all("interrupted at iteration" in line for line in errors), errors
    else:
        assert any("lost contact with the other processes" in line for line in errors), errors
    ckpt = torch.load(run / RunDir.CHECKPOINT, weights_only=False)  # never a truncated file
    json.loads((run / RunDir.METRICS).read_text()) if (run / RunDir.METRICS).exists() else None
    assert not list(run.glob(".*.tmp"))
    done = ckpt["iteration"]
    resume(run, {"iters": done + 2, "eval_at": [done + 2]}, hooks=[])  # the run goes on, in one process
    assert torch.load(run / RunDir.CHECKPOINT, weights_only=False)["iteration"] == done + 2


def test_batch_rules() -> None:
    cfg = TrainConfig.make(batch_views=4, optimizer="tr")
    rules = batch_rules(cfg)
    assert rules.optim.lr_opacity == pytest.approx(2 * cfg.optim.lr_opacity)
    assert rules.optim.adam_eps == pytest.approx(cfg.optim.adam_eps / 2)
    assert rules.optim.adam_beta2 == pytest.approx(cfg.optim.adam_beta2 ** 4)
    assert rules.optim.eps_start == pytest.approx(16 * cfg.optim.eps_start)  # radii x B
    assert rules.optim.theta1 == pytest.approx(cfg.optim.theta1 ** 4)
    assert rules.sh_interval == cfg.sh_interval // 4
    assert batch_rules(TrainConfig.make(batch_views=1)) == TrainConfig.make(batch_views=1)
    unscaled = TrainConfig.make(batch_views=4, batch_scaling=False)
    assert batch_rules(unscaled) == unscaled


def _check_identical_worker(rank: int, init_file: str, results: str) -> None:
    from trsplat.errors import TrsplatError
    from trsplat.training.distributed import World

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    world = World(rank=rank, size=2)
    params = {"means": torch.arange(6.0).reshape(2, 3), "opacity_logits": torch.zeros(2)}
    world.check_identical(params, 1)  # the same everywhere: passes
    total = {"g": torch.full((3,), float(rank + 1))}
    world.all_reduce_sum(total)
    if rank == 1:
        params["means"][1, 2] = torch.nextafter(params["means"][1, 2], torch.tensor(10.0))  # one ulp
    try:
        world.check_identical(params, 7)
        outcome = "passed"
    except TrsplatError as exc:
        outcome = str(exc)
    Path(results, f"{rank}.json").write_text(json.dumps({"sum": total["g"].tolist(), "outcome": outcome}))
    dist.destroy_process_group()


def test_parameter_check_catches_one_ulp_of_difference(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_check_identical_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["sum"] == [3.0, 3.0, 3.0]
        assert "iteration 7: the parameters of rank(s) [1] differ from rank 0's" in result["outcome"]


def _gloo_threads() -> list[str]:
    """Names of this process's threads that belong to gloo (its workers and its I/O loop)."""
    names = []
    for task in Path("/proc/self/task").iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            pass
    return sorted(name for name in names if "gloo" in name)


def _teardown_worker(rank: int, port: int, results: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    world = init_world(60.0)
    # what a training run does after joining: the first torch.optim optimiser imports torch._dynamo,
    # which imports torch.distributed.nn (its collectives' default argument is the default group)
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    importlib.import_module("torch.distributed.nn")
    world.all_reduce_sum({"x": torch.ones(2)})
    running = _gloo_threads()
    close_world(world)
    Path(results, f"{rank}.json").write_text(json.dumps({"running": running, "after": _gloo_threads()}))


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads through /proc")
def test_closing_the_world_ends_the_gloo_threads(tmp_path) -> None:
    # threads left running into interpreter shutdown can abort a finished run (SIGABRT at exit)
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_teardown_worker, args=(port, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["running"], "no gloo threads found while the group was up"
        assert result["after"] == [], result
