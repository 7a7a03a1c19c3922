"""``trsplat bench optimizers``: spec, derived figures on hand-written runs, tables, plots,
resumability, and one real micro study."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest

from trsplat.bench.datasets import DATA_ENV
from trsplat.bench.study import aggregate as agg
from trsplat.bench.study import cli as study_cli
from trsplat.bench.study import runner
from trsplat.bench.study import spec as sp
from trsplat.bench.study.report import aggregate
from trsplat.config import RENAMED, TrainConfig, leaf_owners
from trsplat.errors import TrsplatError

ITERS = 100
EVALS = [25, 50, 75, 100]
MIB = 2**20

# PSNR per (variant, seed) at 25/50/75/100 on scene "s1"; scene "s2" is s1 + 1 dB everywhere.
PSNR = {
    ("adam", 0): [20, 22, 24, 25], ("adam", 1): [21, 23, 25, 26],                      # final mean 25.5
    ("adam-tr-paper", 0): [21, 23, 25, 26], ("adam-tr-paper", 1): [22, 24, 26, 27],    # reaches 25.5 at 75
    ("tr-hutchinson-paper", 0): [22, 25, 26, 27], ("tr-hutchinson-paper", 1): [24, 26, 27, 28],  # at 50
    ("tr-none-paper", 0): [20, 21, 22, 23], ("tr-none-paper", 1): [21, 22, 23, 24],    # never
}
SECONDS = {"adam": {0: [10, 20, 30, 40], 1: [10, 20, 30, 44]},      # total mean 42
           "adam-tr-paper": {0: [11, 22, 33, 44], 1: [11, 22, 33, 44]},
           "tr-hutchinson-paper": {0: [30, 60, 90, 120], 1: [30, 60, 90, 120]},
           "tr-none-paper": {0: [20, 40, 60, 80], 1: [20, 40, 60, 80]}}
RSS = {"adam": 1000, "adam-tr-paper": 1050, "tr-hutchinson-paper": 1200, "tr-none-paper": 1100}


def spec_dict(data_dir: str, **extra) -> dict:
    d = {
        "name": "unit", "iters": ITERS, "seeds": [0, 1], "eval_fraction": 0.25, "table_fractions": [0.5, 1.0],
        "reference": "adam", "common": {"lpips": True},
        "scenes": {"s1": {"path": data_dir, "options": {"n_random_init": 50}},
                   "s2": {"path": data_dir, "options": {"n_random_init": 50}}},
        "variants": {"adam": {"overrides": {"optimizer": "adam"}},
                     "adam-tr-paper": {"overrides": {"optimizer": "adam-tr"}, "eps": "paper"},
                     "tr-hutchinson-paper": {"overrides": {"optimizer": "tr", "curvature": "hutchinson"}, "eps": "paper"},
                     "tr-none-paper": {"overrides": {"optimizer": "tr", "curvature": "none"}, "eps": "paper"}},
    }
    d.update(extra)
    return d


def write_fake_run(out: Path, spec: sp.StudySpec, scene: str, variant: str, seed: int, *, upto: int = ITERS,
                   finished: bool = True, psnr_offset: float = 0.0, machine: str | None = None) -> Path:
    """A run folder as ``trsplat train`` leaves it, with the known numbers above."""
    path = sp.run_dir(out, scene, variant, seed)
    path.mkdir(parents=True, exist_ok=True)
    cfg = spec.run_config(scene, variant, seed, out).to_dict()
    evals = []
    for k, it in enumerate(EVALS):
        if it > upto:
            break
        p = PSNR[(variant, seed)][k] + psnr_offset
        rec = {"iteration": it, "psnr": p, "ssim": p / 100, "lpips": 1 - p / 50, "lpips_corrected": 0.5,
               "lpips_alex": 0.4, "train_seconds": SECONDS[variant][seed][k],
               "seconds_per_iteration": SECONDS[variant][seed][k] / it,
               "peak_rss_bytes": RSS[variant] * MIB * (0.5 if k == 0 else 1.0), "peak_cuda_bytes": None}
        if variant != "adam":
            rec["on_bound_fraction"] = {"means": 0.1 if k == 0 else 0.3, "sh_dc": 0.0}
        if machine is not None:
            rec["machine"] = machine
        evals.append(rec)
    (path / "config.json").write_text(json.dumps(cfg))
    (path / "metrics.json").write_text(json.dumps({"scene": scene, "config": cfg, "n_gaussians": 50,
                                                   "backend": "cpu", "evals": evals}))
    (path / "checkpoint.pt").write_bytes(b"fake")
    if finished:
        (path / "point_cloud.ply").write_bytes(b"ply")
    return path


@pytest.fixture()
def study(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    spec = sp.StudySpec.from_dict(spec_dict(str(data)))
    out = tmp_path / "study"
    for scene, offset in (("s1", 0.0), ("s2", 1.0)):
        for variant in spec.variants:
            for seed in spec.seeds:
                write_fake_run(out, spec, scene, variant, seed, psnr_offset=offset)
    return spec, out


# -- spec ----------------------------------------------------------------------------------------
def test_spec_iterations_meta_and_guards(tmp_path) -> None:
    spec = sp.StudySpec.from_dict(spec_dict(str(tmp_path)))
    assert spec.eval_iterations() == EVALS and spec.table_iterations() == [50, 100] and spec.half_iteration() == 50
    paper = sp.load_spec(preset="paper-study", data_root=tmp_path)
    assert paper.eval_iterations() == [3000, 6000, 7000, 9000, 12000, 15000, 18000, 21000, 24000, 27000, 30000]
    assert paper.table_iterations() == [7000, 15000, 30000]
    assert len(paper.variants) == 9 and paper.seeds == [0, 1, 2]
    assert paper.variants["tr-gnb-rebuttal"].meta == {"optimizer": "tr", "curvature": "gnb", "eps": "rebuttal"}
    assert paper.variants["tr-gnb-rebuttal"].overrides["eps_start"] == 1e-5
    assert paper.scenes["nerf_synthetic_chair"].options["max_test_views"] >= 25
    assert agg.curvature_partner(paper, "tr-hutchinson-paper") == "tr-none-paper"
    assert agg.curvature_partner(paper, "tr-gnb-rebuttal") == "tr-none-rebuttal"
    assert agg.curvature_partner(paper, "adam-tr-paper") is None
    abl = sp.load_spec(preset="ablations", data_root=tmp_path)
    assert abl.variants["adam-run-decay"].meta == {"optimizer": "adam", "ablation": "lr_means_max_steps=None"}
    assert abl.run_config("colmap_bird", "adam-run-decay", 0, tmp_path / "o").optim.lr_means_max_steps is None
    assert "ablation" in abl.variants["tr-hutchinson-paper-guard-abs"].meta
    assert agg.curvature_partner(abl, "tr-hutchinson-paper-guard-abs") is None
    assert agg.curvature_partner(abl, "tr-hutchinson-paper-printed-bounds") == "tr-none-paper-printed-bounds"
    guarded = abl.variants["tr-hutchinson-rebuttal-opacity-eps0.1"]
    assert guarded.meta == {"optimizer": "tr", "curvature": "hutchinson", "eps": "rebuttal",
                            "ablation": "tr_opacity_eps_scale=0.1"}
    assert agg.curvature_partner(abl, "tr-hutchinson-rebuttal-opacity-eps0.1") == "tr-none-rebuttal-opacity-eps0.1"
    assert agg.curvature_partner(abl, "tr-gnb-paper-median-radius") == "tr-none-paper-median-radius"
    assert (agg.curvature_partner(abl, "tr-gnb-rebuttal-opacity-eps0.1-median-radius")
            == "tr-none-rebuttal-opacity-eps0.1-median-radius")
    assert (agg.curvature_partner(abl, "tr-gnb-paper-printed-bounds-q0.25-radius")
            == "tr-none-paper-printed-bounds-q0.25-radius")
    assert abl.run_config("colmap_bird", "tr-gnb-paper-printed-bounds-q0.25-radius", 0,
                          tmp_path / "o").optim.step_norm_quantile == 0.25
    # a variant may not change the initialisation or the evaluation
    for key, value in (("n_random_init", 10), ("downscale", 2), ("seed", 3), ("max_test_views", 5)):
        bad = spec_dict(str(tmp_path))
        bad["variants"]["adam"]["overrides"][key] = value
        with pytest.raises(TrsplatError, match=key):
            sp.StudySpec.from_dict(bad)
    with pytest.raises(TrsplatError, match="reference"):
        sp.StudySpec.from_dict(spec_dict(str(tmp_path), reference="sgd"))
    # same (scene, seed): identical init options in every variant's TrainConfig
    cfgs = [spec.run_config("s1", v, 1, tmp_path / "o").flat() for v in spec.variants]
    for key in ("data", "seed") + sp.INIT_KEYS + sp.EVAL_KEYS + ("iters", "eval_at"):
        assert len({json.dumps(c[key]) for c in cfgs}) == 1, key


def test_identical_initialisation_per_scene_and_seed(tmp_path) -> None:
    from trsplat.synthetic import make_synthetic_scene
    from trsplat.training import prepare

    scene = make_synthetic_scene(tmp_path / "scene", size=16, n_train=3, n_test=1)
    spec = sp.StudySpec.from_dict(spec_dict(str(scene)))
    inits = [prepare(spec.run_config("s1", v, 1, tmp_path / "o"))[1] for v in ("adam", "tr-hutchinson-paper")]
    other_seed = prepare(spec.run_config("s1", "adam", 0, tmp_path / "o"))[1]
    for name, tensor in inits[0].params().items():
        assert tensor.equal(inits[1].params()[name]), name
    assert not inits[0].means.equal(other_seed.means)


def test_init_consistency_flags_other_options_not_other_copies_of_a_generated_scene(tmp_path) -> None:
    """A reference run copied from another study that generated the same scene in its own
    ``scenes/`` folder is consistent; another init option or another dataset is not."""
    d = spec_dict(str(tmp_path / "data"))
    d["scenes"]["s1"] = {"path": "scenes/s1", "generate": {"size": 16}, "options": {"n_random_init": 50}}
    spec = sp.StudySpec.from_dict(d)

    def runs(edit: dict[str, dict]) -> dict:
        out = {}
        for scene in spec.scenes:
            out[scene] = {}
            for v in spec.variants:
                cfg = spec.run_config(scene, v, 0, tmp_path / "o").flat()
                cfg.update(edit.get(f"{scene}/{v}", {}))
                out[scene][v] = {0: agg.RunData("finished", {}, config=cfg), 1: agg.RunData("missing", {})}
        return out

    assert agg.init_consistency(spec, runs({})) == []
    copied = {"data": "/elsewhere/other-study/scenes/s1"}
    assert agg.init_consistency(spec, runs({"s1/adam": copied})) == []
    problems = agg.init_consistency(spec, runs({"s1/adam": {"n_random_init": 60}, "s2/adam": copied}))
    assert len(problems) == 2 and problems[0].startswith("s1 seed 0") and problems[1].startswith("s2 seed 0")


def test_fixed_keys_are_config_options() -> None:
    assert set(sp.FIXED_KEYS) <= set(leaf_owners())


def test_preset_data_root_from_option_or_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    with pytest.raises(TrsplatError, match=f"set {DATA_ENV} or pass --data-root"):
        sp.load_spec(preset="paper-study")
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert sp.load_spec(preset="paper-study").scenes["colmap_bird"].path == str(tmp_path / "env" / "colmap_bird")
    spec = sp.load_spec(preset="paper-study", data_root=tmp_path / "opt")
    assert spec.scenes["nerf_synthetic_chair"].path == str(tmp_path / "opt" / "nerf_synthetic_chair")
    with pytest.raises(TrsplatError, match=f"does not exist .*{DATA_ENV}"):
        runner.ensure_scenes(spec.select(scenes=["colmap_bird"]), tmp_path / "study", log=lambda *_: None)


# -- derived figures -------------------------------------------------------------------------------
def test_derived_figures_from_known_numbers(study) -> None:
    spec, out = study
    res = aggregate(spec, out, plots=False, log=lambda *_: None)
    s1 = res["scenes"]["s1"]
    # curves: mean ± std over seeds
    adam = s1["variants"]["adam"]
    assert adam["psnr"]["mean"] == [20.5, 22.5, 24.5, 25.5]
    assert adam["psnr"]["std"][0] == pytest.approx(math.sqrt(0.5)) and adam["psnr"]["n"] == [2, 2, 2, 2]
    assert adam["total_train_seconds"]["mean"] == 42 and adam["peak_rss_bytes"]["mean"] == 1000 * MIB
    assert adam["seconds_per_iteration_final"]["mean"] == pytest.approx(0.42)
    # quality_gap: paired differences, mean and std
    gap = s1["quality_gap"]["tr-hutchinson-paper"]
    assert gap["reference"] == "adam" and gap["seeds"] == [0, 1] and gap["iterations"] == EVALS
    assert gap["psnr"] == pytest.approx([2.5, 3.0, 2.0, 2.0])
    assert gap["psnr_std"][0] == pytest.approx(math.sqrt(0.5)) and gap["psnr_std"][1] == 0
    assert gap["ssim"] == pytest.approx([0.025, 0.03, 0.02, 0.02])
    assert gap["lpips"] == pytest.approx([-0.05, -0.06, -0.04, -0.04])
    assert s1["quality_gap"]["adam-tr-paper"]["psnr"] == pytest.approx([1, 1, 1, 1])
    assert "adam" not in s1["quality_gap"]
    # iteration_ratio: tr reaches 25.5 (adam's final mean) exactly at 50 -> 0.5; adam-tr at 75; none never
    ir = s1["iteration_ratio"]
    assert ir["tr-hutchinson-paper"]["value"] == 0.5 and ir["tr-hutchinson-paper"]["target_psnr"] == 25.5
    assert ir["adam-tr-paper"]["value"] == 0.75
    assert ir["tr-none-paper"]["value"] is None and ir["tr-none-paper"]["iteration"] is None
    # time_ratio, first-eval rule: tr's seconds at iteration 50 (60) / adam's total (42)
    tr = s1["time_ratio"]
    assert tr["tr-hutchinson-paper"]["value"] == pytest.approx(60 / 42)
    assert tr["tr-hutchinson-paper"]["rule"] == "first-eval"
    assert tr["adam-tr-paper"]["value"] == pytest.approx(33 / 42)
    assert tr["tr-none-paper"]["value"] is None
    # memory_ratio: max peak RSS over the evals
    assert s1["memory_ratio"]["tr-hutchinson-paper"]["rss"] == pytest.approx(1.2)
    assert s1["memory_ratio"]["adam-tr-paper"]["rss"] == pytest.approx(1.05)
    assert s1["memory_ratio"]["tr-none-paper"]["cuda"] is None
    # curvature_gain: hutchinson - none, paired
    cg = s1["curvature_gain"]
    assert set(cg) == {"tr-hutchinson-paper"} and cg["tr-hutchinson-paper"]["baseline"] == "tr-none-paper"
    assert cg["tr-hutchinson-paper"]["psnr"] == pytest.approx([2.5, 4.0, 4.0, 4.0])
    # on-bound fraction, weighted by the iterations of each eval interval
    ob_frac = s1["variants"]["tr-hutchinson-paper"]["on_bound_fraction"]
    assert ob_frac["means"]["mean"] == pytest.approx(0.25) and ob_frac["sh_dc"]["mean"] == 0
    # s2 = s1 + 1 dB: same gaps; the scene average is s1 + 0.5
    assert res["scenes"]["s2"]["quality_gap"]["tr-hutchinson-paper"]["psnr"] == pytest.approx([2.5, 3, 2, 2])
    avg = res["average"]
    assert avg["variants"]["adam"]["psnr"]["mean"] == pytest.approx([21.0, 23.0, 25.0, 26.0])
    assert avg["variants"]["adam"]["psnr"]["std"][3] == pytest.approx(math.sqrt(0.5))
    assert avg["iteration_ratio"]["tr-hutchinson-paper"]["value"] == 0.5
    assert avg["memory_ratio"]["tr-hutchinson-paper"]["rss"] == pytest.approx(1.2)
    # verdicts are generated from these numbers
    texts = [v["text"] for v in res["verdicts"]]
    assert any(t.startswith("s1: tr-hutchinson-paper@50 ≥ adam@100") and "PSNR holds (25.50 vs 25.50)" in t
               for t in texts)
    assert any("s1: tr-none-paper never reaches adam's final PSNR 25.50" in t for t in texts)
    assert any("s1: curvature helps (tr-hutchinson-paper vs tr-none-paper) at 100: holds (+4.00 dB" in t
               for t in texts)
    on_disk = json.loads((out / "results.json").read_text())
    for key in ("quality_gap", "iteration_ratio", "time_ratio", "memory_ratio", "curvature_gain"):
        assert key in on_disk["scenes"]["s1"]


def test_time_ratio_only_divides_seconds_from_one_machine(study) -> None:
    """Runs that record their machine: the same machine gives the ratio, another machine for the
    variant or the reference gives none (and the report says why); runs without a label count as
    unknown, as before the label existed."""
    spec, out = study
    for variant in ("adam", "tr-hutchinson-paper", "adam-tr-paper"):
        for seed in spec.seeds:
            machine = "CPU B" if (variant, seed) == ("tr-hutchinson-paper", 1) else "CPU A"
            write_fake_run(out, spec, "s1", variant, seed, machine=machine)
    res = aggregate(spec, out, plots=False, log=lambda *_: None)
    tr = res["scenes"]["s1"]["time_ratio"]
    assert tr["adam-tr-paper"]["value"] == pytest.approx(33 / 42) and tr["adam-tr-paper"]["machines"] == ["CPU A"]
    assert tr["tr-hutchinson-paper"]["value"] is None
    assert tr["tr-hutchinson-paper"]["machines"] == ["CPU A", "CPU B"]
    assert res["scenes"]["s2"]["time_ratio"]["tr-hutchinson-paper"]["value"] == pytest.approx(60 / 42)
    assert res["average"]["time_ratio"]["tr-hutchinson-paper"]["value"] is None  # s1's labels differ
    md = (out / "results.md").read_text()
    row = next(ln for ln in md.splitlines() if ln.startswith("| tr-hutchinson-paper | 0.50 (@50) |"))
    assert "other machines" in row
    assert any(v["text"].startswith("s1: tr-hutchinson-paper reaches") and "come from CPU A, CPU B" in v["text"]
               for v in res["verdicts"])
    write_fake_run(out, spec, "s1", "adam", 0)  # a run without the label next to labelled ones: unknown
    res = aggregate(spec, out, plots=False, log=lambda *_: None)
    assert res["scenes"]["s1"]["time_ratio"]["adam-tr-paper"]["value"] is None
    assert res["scenes"]["s1"]["time_ratio"]["adam-tr-paper"]["machines"] == ["CPU A", agg.UNKNOWN_MACHINE]


def test_markdown_table_layout(study) -> None:
    spec, out = study
    aggregate(spec, out, command="trsplat bench optimizers --out X", plots=False, log=lambda *_: None)
    md = (out / "results.md").read_text()
    assert "| Scene | Method | SSIM ↑ | PSNR ↑ | LPIPS ↓ | Time (s) | Mem (RSS, MiB) |" in md
    # Table-1 row: SSIM / PSNR / LPIPS at 50 / 100 as mean ± std, total seconds, peak memory
    row = next(ln for ln in md.splitlines() if ln.startswith("| s1 | adam |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "22.50 ± 0.71 / 25.50 ± 0.71"
    assert cells[2] == "0.225 ± 0.007 / 0.255 ± 0.007"
    assert cells[4] == "0.550 ± 0.014 / 0.490 ± 0.014"
    assert cells[5] == "42.0 ± 2.8" and cells[6] == "1000 ± 0"
    assert "| average | adam | " in md
    assert "## Verdicts" in md and "## Steps on the trust-region bound" in md and "## Curvature gain" in md
    assert "`trsplat bench optimizers --out X`" in md and "cores" in md
    assert "| s1 | tr-hutchinson-paper (27.50) | tr-hutchinson-paper (0.275) | tr-hutchinson-paper (0.450) |" in md
    assert "none: every planned run finished" in md


def test_partial_and_missing_runs_are_reported(study) -> None:
    spec, out = study
    write_fake_run(out, spec, "s1", "tr-hutchinson-paper", 1, upto=50, finished=False)   # interrupted
    shutil.rmtree(sp.run_dir(out, "s1", "adam-tr-paper", 1))                            # never started
    res = aggregate(spec, out, plots=False, log=lambda *_: None)
    s1 = res["scenes"]["s1"]
    assert res["run_states"] == {"finished": 14, "partial": 1, "missing": 1, "failed": 0}
    trh = s1["variants"]["tr-hutchinson-paper"]
    assert trh["runs"] == {"0": "finished", "1": "partial@50"} and trh["psnr"]["n"] == [2, 2, 1, 1]
    assert trh["psnr"]["mean"] == [23.0, 25.5, 26.0, 27.0]
    # derived figures use finished runs only: seed 0 alone (adam's seed-0 final is 25)
    gap = s1["quality_gap"]["tr-hutchinson-paper"]
    assert gap["seeds"] == [0] and gap["psnr"] == [2, 3, 2, 2] and gap["psnr_std"] == [None] * 4
    assert s1["iteration_ratio"]["tr-hutchinson-paper"]["value"] == 0.5
    assert s1["curvature_gain"]["tr-hutchinson-paper"]["seeds"] == [0]
    assert s1["variants"]["adam-tr-paper"]["runs"]["1"] == "missing"
    assert res["average"]["quality_gap"]["tr-hutchinson-paper"]["seeds"] == [0]
    md = (out / "results.md").read_text()
    assert "(1/2)" in md
    assert "`runs/s1/tr-hutchinson-paper/seed1`: partial at iteration 50" in md
    assert "`runs/s1/adam-tr-paper/seed1`: missing" in md
    # nothing finished for one variant: its figures are null, not invented
    for seed in (0, 1):
        shutil.rmtree(sp.run_dir(out, "s2", "tr-none-paper", seed))
    res = aggregate(spec, out, plots=False, log=lambda *_: None)
    assert res["scenes"]["s2"]["quality_gap"]["tr-none-paper"] is None
    assert res["scenes"]["s2"]["iteration_ratio"]["tr-none-paper"] is None
    assert res["scenes"]["s2"]["curvature_gain"]["tr-hutchinson-paper"] is None


def test_plots_are_written(study) -> None:
    spec, out = study
    res = aggregate(spec, out, plots=True, log=lambda *_: None)
    expected = {"plots/psnr_s1.png", "plots/psnr_s2.png", "plots/psnr_average.png", "plots/psnr_overview.png",
                "plots/peak_memory.png"}
    assert set(res["plots"]) == expected
    for p in expected:
        assert (out / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plots/peak_memory.png" in (out / "results.md").read_text()


# -- resumability ------------------------------------------------------------------------------
def _single_scene_spec(tmp_path) -> sp.StudySpec:
    d = spec_dict(str(tmp_path), seeds=[0, 1, 2])
    d["scenes"] = {"s1": d["scenes"]["s1"]}
    d["variants"] = {"adam": d["variants"]["adam"]}
    return sp.StudySpec.from_dict(d)


def test_finished_skipped_interrupted_resumed_missing_started(tmp_path, monkeypatch) -> None:
    import trsplat.training as train_mod

    spec = _single_scene_spec(tmp_path)
    out = tmp_path / "study"
    monkeypatch.setitem(PSNR, ("adam", 2), [1, 2, 3, 4])
    monkeypatch.setitem(SECONDS["adam"], 2, [1, 2, 3, 4])
    write_fake_run(out, spec, "s1", "adam", 0)                               # finished
    write_fake_run(out, spec, "s1", "adam", 1, upto=50, finished=False)     # interrupted
    calls = []

    def fake_train(cfg):
        calls.append(("train", Path(cfg.out).name))
        write_fake_run(out, spec, "s1", "adam", cfg.seed)
        return {}

    def fake_resume(path):
        calls.append(("resume", Path(path).name))
        write_fake_run(out, spec, "s1", "adam", int(Path(path).name[4:]))
        return {}

    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(train_mod, "resume", fake_resume)
    tasks = runner.plan_runs(spec, out)
    assert [(t.seed, t.action) for t in tasks] == [(0, "skip"), (1, "resume"), (2, "start")]
    outcome = runner.execute(tasks, out, isolate=False, log=lambda *_: None)
    assert calls == [("resume", "seed1"), ("train", "seed2")]
    assert outcome == {"s1/adam/seed1": "ok", "s1/adam/seed2": "ok"}
    assert [t.action for t in runner.plan_runs(spec, out)] == ["skip"] * 3
    # a failing run is recorded and the others go on
    calls.clear()
    shutil.rmtree(sp.run_dir(out, "s1", "adam", 1))
    shutil.rmtree(sp.run_dir(out, "s1", "adam", 2))

    def failing_train(cfg):
        calls.append(("train", Path(cfg.out).name))
        if cfg.seed == 1:
            raise TrsplatError("iteration 3: the loss is nan; the run diverged")
        return fake_train(cfg)

    monkeypatch.setattr(train_mod, "train", failing_train)
    outcome = runner.execute(runner.plan_runs(spec, out), out, isolate=False, log=lambda *_: None)
    assert outcome["s1/adam/seed1"].startswith("iteration 3") and outcome["s1/adam/seed2"] == "ok"
    assert "s1/adam/seed1" in json.loads((out / "failures.json").read_text())
    res = aggregate(spec, out, plots=False, log=lambda *_: None)
    assert [r["state"] for r in res["runs"]] == ["finished", "failed", "finished"]
    # a run folder trained with another configuration is refused, never mixed in
    cfg = json.loads((sp.run_dir(out, "s1", "adam", 0) / "config.json").read_text())
    cfg["optim"]["lr_opacity"] = 0.5
    (sp.run_dir(out, "s1", "adam", 0) / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TrsplatError, match="lr_opacity"):
        runner.plan_runs(spec, out)
    # the flat config.json of earlier versions, with the same options, is the same run
    flat = spec.run_config("s1", "adam", 0, out).flat()
    (sp.run_dir(out, "s1", "adam", 0) / "config.json").write_text(json.dumps(flat))
    assert runner.plan_runs(spec, out)[0].action == "skip"


def _args(out: Path, **kw) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    study_cli.add_arguments(parser)
    argv = ["--out", str(out)]
    for key, value in kw.items():
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return parser.parse_args(argv)


def test_cli_only_aggregate_and_errors(study, tmp_path, capsys) -> None:
    spec, out = study
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec.to_dict()))
    assert study_cli.main(_args(out, spec=spec_file, only_aggregate=True, no_plots=True)) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["run_states"]["finished"] == 16
    assert "--only-aggregate" in res["command"]
    with pytest.raises(TrsplatError, match="unknown variant"):
        study_cli.main(_args(out, spec=spec_file, variants="adam,nope"))
    with pytest.raises(TrsplatError, match="either --preset or --spec"):
        study_cli.main(_args(out, spec=spec_file, preset="quick"))
    with pytest.raises(TrsplatError, match="--seeds"):
        study_cli.main(_args(out, spec=spec_file, seeds="a"))
    # --seeds runs part of the study: the study and its report keep every seed
    assert study_cli.main(_args(out, spec=spec_file, seeds="1", no_plots=True)) == 0
    assert json.loads((out / "study.json").read_text())["seeds"] == [0, 1]
    assert json.loads((out / "results.json").read_text())["run_states"]["finished"] == 16
    capsys.readouterr()
    assert study_cli.main(_args(tmp_path / "x", preset="paper-study", iters=3000, seeds="0,5", show_spec=True,
                                data_root=tmp_path)) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["iters"] == 3000 and shown["seeds"] == [0, 1, 2, 5] and len(shown["variants"]) == 9


# -- one real micro study -------------------------------------------------------------------------
def test_end_to_end_micro_study(tmp_path) -> None:
    spec = {
        "name": "micro", "iters": 6, "seeds": [0], "eval_fraction": 0.5, "table_fractions": [0.5, 1.0],
        "reference": "adam", "common": {"backend": "reference", "lpips": False, "n_saved_renders": 0},
        "scenes": {"synthetic": {"path": "scenes/tiny", "generate": {"size": 24, "n_train": 4, "n_test": 2},
                                 "options": {"n_random_init": 100}}},
        "variants": {"adam": {"overrides": {"optimizer": "adam"}},
                     "tr-hutchinson-paper": {"overrides": {"optimizer": "tr", "curvature": "hutchinson",
                                                           "curvature_interval": 3}, "eps": "paper"}},
    }
    spec_file = tmp_path / "micro.json"
    spec_file.write_text(json.dumps(spec))
    out = tmp_path / "study"
    # each run in its own process, two at a time with one thread each
    assert study_cli.main(_args(out, spec=spec_file, no_plots=True, jobs=2)) == 0
    assert json.loads((out / "invocations.json").read_text())[0]["jobs"] == 2
    assert (out / "scenes" / "tiny" / "ground_truth.ply").is_file()
    res = json.loads((out / "results.json").read_text())
    assert res["run_states"]["finished"] == 2
    s = res["scenes"]["synthetic"]
    assert s["variants"]["adam"]["psnr"]["n"] == [1, 1] and s["variants"]["adam"]["iterations"] == [3, 6]
    assert s["quality_gap"]["tr-hutchinson-paper"]["psnr"][1] is not None
    assert s["memory_ratio"]["tr-hutchinson-paper"]["rss"] > 0
    assert s["variants"]["tr-hutchinson-paper"]["on_bound_fraction"]
    for variant in ("adam", "tr-hutchinson-paper"):
        run = sp.run_dir(out, "synthetic", variant, 0)
        assert (run / "point_cloud.ply").is_file() and (run / "config.json").is_file()
    # everything finished: a second invocation trains nothing and re-aggregates
    assert [t.action for t in runner.plan_runs(sp.StudySpec.from_dict(json.loads((out / "study.json").read_text())),
                                           out)] == ["skip", "skip"]
    assert study_cli.main(_args(out, only_aggregate=True)) == 0
    assert (out / "plots" / "psnr_synthetic.png").is_file()
    # reduced to what git keeps of a study (config.json + metrics.json per run), it is still finished
    for variant in ("adam", "tr-hutchinson-paper"):
        run = sp.run_dir(out, "synthetic", variant, 0)
        assert json.loads((run / "metrics.json").read_text())["finished"] is True
        for heavy in ("point_cloud.ply", "checkpoint.pt"):
            (run / heavy).unlink()
    assert [t.action for t in runner.plan_runs(sp.StudySpec.from_dict(json.loads((out / "study.json").read_text())),
                                           out)] == ["skip", "skip"]
    assert study_cli.main(_args(out, only_aggregate=True)) == 0
    assert json.loads((out / "results.json").read_text())["run_states"]["finished"] == 2


# -- the committed studies ------------------------------------------------------------------------
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
COMMITTED = sorted(p.parent for p in RESULTS.glob("*/study.json") if (p.parent / "runs").is_dir())
VOLATILE = ("generated", "command", "aggregated_on", "plots")  # when, how and where it was aggregated


def test_every_committed_run_config_loads() -> None:
    """Every committed ``config.json`` loads with every option it names kept: the flat ones of
    earlier versions and the nested ones of the current version."""
    paths = sorted(RESULTS.glob("**/runs/**/config.json"))
    assert paths
    for path in paths:
        stored = json.loads(path.read_text())
        config = TrainConfig.from_dict(stored)
        if any(isinstance(v, dict) for v in stored.values()):  # options added since get their defaults
            loaded = config.to_dict()
            assert {k: ({o: loaded[k][o] for o in v} if isinstance(v, dict) else loaded[k])
                    for k, v in stored.items()} == stored, path
        else:
            flat = config.flat()
            assert {k: flat[RENAMED.get(k, k)] for k in stored} == stored, path


@pytest.mark.parametrize("study", COMMITTED, ids=[p.name for p in COMMITTED])
def test_reaggregating_a_committed_study_reproduces_its_results(study: Path, tmp_path) -> None:
    out = tmp_path / study.name
    shutil.copytree(study, out, ignore=shutil.ignore_patterns("plots", "results.*"))
    assert study_cli.main(_args(out, only_aggregate=True, no_plots=True)) == 0
    committed, again = (json.loads((p / "results.json").read_text()) for p in (study, out))
    assert {k: v for k, v in again.items() if k not in VOLATILE} == \
        {k: v for k, v in committed.items() if k not in VOLATILE}


def test_set_overrides_scene_options_and_refuses_variant_options(tmp_path) -> None:
    out = tmp_path / "study"
    spec = study_cli.resolve_spec(_args(out, preset="densify", set="cap_max=1234", data_root=tmp_path))
    assert {spec.run_config(s, "adam+mcmc", 0, out).strategy.cap_max for s in spec.scenes} == {1234}
    with pytest.raises(TrsplatError, match="--set densify: the variants .* set it themselves"):
        study_cli.resolve_spec(_args(out, preset="densify", set="densify=adc", data_root=tmp_path))


def test_the_report_names_the_densification_of_the_variants(tmp_path) -> None:
    """results.md's setup line: "no densification" for the paper presets, the strategies for
    the densify preset."""
    from trsplat.bench.study.report import _densification
    from trsplat.bench.study.spec import load_spec

    assert _densification(load_spec(preset="adaptive", data_root=tmp_path)) == "no densification"
    assert _densification(load_spec(preset="densify", data_root=tmp_path)) == "densification adc/mcmc/none per variant"
