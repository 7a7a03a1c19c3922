"""``trsplat bench iteration``: the profile of real training steps is complete and consistent."""

from __future__ import annotations

import pytest

from trsplat.bench.datasets import DATA_ENV
from trsplat.bench.iteration import INNER_PARTS, TOP_PARTS, format_table, profile_training
from trsplat.cli import main as cli_main
from trsplat.synthetic import make_synthetic_scene


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory):
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


def test_profile_of_training_steps(tiny_scene):
    rows = [profile_training(str(tiny_scene), opt, downscale=1, n_random_init=200, iters=10, warmup=2,
                             start_iteration=3000, backend="cpu")
            for opt in ("adam", "tr")]
    adam, tr = rows
    for r in rows:
        assert r["s_per_it"] > 0 and r["peak_rss_bytes"] > 0 and r["n_gaussians"] == 200
        # the top-level parts are disjoint pieces of the step: they never add up to more than it
        assert sum(r[k] for k in TOP_PARTS) <= r["s_per_it"] * 1.001
        assert r["render_s"] > 0 and r["backward_s"] > 0 and r["optimizer_step_s"] > 0
        assert r["composite_forward_s"] > 0 and r["project_backward_s"] > 0
    # adam renders once per step: the projection, binning and compositing forwards are disjoint
    # pieces of that render (the projection's VJP, also a torch Function "forward", is not one)
    assert adam["project_forward_s"] + adam["binning_s"] + adam["composite_forward_s"] <= adam["render_s"] * 1.001
    assert adam["project_backward_s"] + adam["composite_backward_s"] <= adam["backward_s"] * 1.001
    # only tr refreshes curvature (once in these 10 steps: t = 3011) and only it clips
    assert adam["curvature_s"] == 0 and adam["trust_region_s"] == 0
    assert tr["curvature_s"] > 0 and tr["trust_region_s"] > 0
    assert tr["curvature_s"] <= tr["optimizer_step_s"]
    table = format_table(rows)
    assert "time / adam" in table and all(("↳ " + k.removesuffix("_s").replace("_", " ")) in table
                                          for k in INNER_PARTS)


def test_missing_capture_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert cli_main(["bench", "iteration", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert DATA_ENV in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


def test_profile_from_a_ply_trains_those_gaussians(tiny_scene, tmp_path):
    from trsplat.gaussians import save_ply
    from trsplat.synthetic import ground_truth_gaussians

    ply = tmp_path / "trained.ply"
    save_ply(ground_truth_gaussians(), ply)  # 2,400 Gaussians, not the 200 of the random init
    row = profile_training(str(tiny_scene), "adam", downscale=1, n_random_init=200, iters=2, warmup=1,
                           backend="cpu", ply=str(ply))
    assert row["n_gaussians"] == len(ground_truth_gaussians())


def test_missing_ply_is_a_one_line_error(tiny_scene, tmp_path, capsys):
    missing = tmp_path / "nope.ply"
    assert cli_main(["bench", "iteration", "--data", str(tiny_scene), "--ply", str(missing),
                     "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("strategy", ["adc", "mcmc"])
def test_profile_with_densification_counts_the_strategy(tiny_scene, strategy):
    row = profile_training(str(tiny_scene), "adam", downscale=1, n_random_init=200, iters=4, warmup=1,
                           start_iteration=1000, backend="cpu", densify=strategy)
    assert row["densify"] == strategy and row["densify_s"] > 0
    assert sum(row[k] for k in TOP_PARTS) <= row["s_per_it"] * 1.001
    assert f"adam+{strategy}" in format_table([row])


def test_profile_of_a_recipe_trains_with_its_options(tiny_scene):
    """``recipe:tr-mcmc`` profiles the default recipe: tr without curvature (no refresh, no
    curvature state), MCMC, the opacity on Adam's step."""
    row = profile_training(str(tiny_scene), "adam", downscale=1, n_random_init=200, iters=4, warmup=1,
                           start_iteration=1000, backend="cpu", recipe="tr-mcmc")
    assert (row["optimizer"], row["densify"], row["recipe"]) == ("tr", "mcmc", "tr-mcmc")
    assert row["trust_region_s"] > 0 and row["curvature_s"] == 0 and row["densify_s"] > 0
    assert "recipe:tr-mcmc" in format_table([row])


def test_unknown_recipe_is_a_one_line_error(tiny_scene, tmp_path, capsys):
    assert cli_main(["bench", "iteration", "--data", str(tiny_scene), "--optimizers", "adam,recipe:nope",
                     "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "recipe:nope" in err and len(err.strip().splitlines()) == 1


def test_bench_render_times_both_backends_on_the_same_splats(tmp_path):
    """``trsplat bench render`` on a tiny synthetic case: every kernel of both backends is timed
    and both see the same visible splats and tile intersections (the cpu projection and binning
    agree with the reference's); the JSON is written."""
    from trsplat.bench.render_bench import _parse_case, run_render_bench

    out = tmp_path / "render.json"
    result = run_render_bench(out, cases=[_parse_case("2k:48x40")], backends=("cpu", "reference"),
                              repeats=1, isolate=False, log=lambda *a: None)
    rows = {r["backend"]: r for r in result["cases"]}
    assert set(rows) == {"cpu", "reference"} and out.is_file()
    for r in rows.values():
        assert r["forward_s"] > 0 and r["backward_s"] > 0 and r["jvp_s"] > 0
    assert rows["cpu"]["n_visible"] == rows["reference"]["n_visible"] > 0
    assert rows["cpu"]["n_intersections"] == rows["reference"]["n_intersections"] > 0
