"""``trsplat bench curvature``: the curvature diagnosis of a tr run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from trsplat.bench import curvature as bc
from trsplat.cli import main as cli_main
from trsplat.config import TrainConfig
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import train


@pytest.fixture(scope="module")
def tr_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("curv")
    scene = make_synthetic_scene(root / "scene", size=32, n_train=6, n_test=2)
    out = root / "run"
    train(TrainConfig.make(data=str(scene), out=str(out), optimizer="tr", iters=12, eval_at=[12], n_random_init=300,
                           lpips=False, backend="reference", sh_interval=4, n_saved_renders=0))
    return out


def test_compare_known_values() -> None:
    a = torch.tensor([1.0, 2.0, 4.0, 0.0, -1.0])
    assert bc.compare(a, a) == pytest.approx((1.0, 1.0))
    ratio, corr = bc.compare(3 * a, a)
    assert ratio == pytest.approx(3.0) and corr == pytest.approx(1.0)
    assert all(math.isnan(x) for x in bc.compare(a, -a))  # no coordinate positive in both


def test_replay_reaches_the_checkpointed_state(tr_run) -> None:
    """--at 12 replays the run from config.json to exactly the state its final checkpoint holds."""
    from_ckpt = bc.diagnose(bc.load_state(tr_run, None), views=3, probes=2)
    replayed = bc.diagnose(bc.load_state(tr_run, 12), views=3, probes=2)
    assert from_ckpt == replayed


def test_diagnosis_is_consistent(tr_run) -> None:
    rec = bc.diagnose(bc.load_state(tr_run, None), views=3, probes=2)
    assert rec["iteration"] == 12 and rec["curvature_updates"] == 2  # refreshes at t = 1 and 11
    assert rec["bias_factor"] == pytest.approx(1 - 0.999 ** 2)
    for name, t in rec["tensors"].items():
        ob = t["on_bound"]
        # D = 0 makes every step longer than with any positive D, in the same direction: a step
        # the trust region clips with D̂ or D_ref is clipped with D = 0 too
        assert ob["none"] >= max(ob["run"], ob["reference"], ob["bias_corrected"]) - 1e-12, name
        # dividing D̂ by the bias factor (< 1) shortens the steps, so no more of them are clipped
        assert ob["bias_corrected"] <= ob["run"] + 1e-12, name
        assert math.isnan(t["overshoot_reference"]) or t["overshoot_reference"] >= 1.0, name
        assert 0.0 <= t["ema_nonpositive"] <= 1.0


def test_cli_writes_json_and_markdown(tr_run, tmp_path, capsys) -> None:
    out = tmp_path / "diag.json"
    assert cli_main(["bench", "curvature", str(tr_run), "--views", "2", "--probes", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert set(record["tensors"]) == {"means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest"}
    assert "| means |" in out.with_suffix(".md").read_text()


def test_cli_errors(tr_run, tmp_path, capsys) -> None:
    assert cli_main(["bench", "curvature", str(tmp_path)]) == 2  # no config.json
    assert "config.json" in capsys.readouterr().err
    assert cli_main(["bench", "curvature", str(tr_run), "--at", "99"]) == 2
    assert "--at 99" in capsys.readouterr().err
