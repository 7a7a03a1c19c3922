"""The nested training config: flat and nested forms, validation from field metadata, CLI flags."""

from __future__ import annotations

import argparse

import pytest

from trsplat.cli import add_config_arguments, build_parser, config_from_args
from trsplat.config import DEFAULT_RECIPE, RECIPES, SUBCONFIGS, TrainConfig, leaf_owners
from trsplat.errors import TrsplatError


def test_nested_and_flat_forms_round_trip() -> None:
    cfg = TrainConfig.make(data="scene", out="run", optimizer="tr", eps_start=1e-5, eval_at=[5, 10], iters=10,
                           densify="none", n_random_init=7)
    assert cfg.optim.optimizer == "tr" and cfg.scene.n_random_init == 7 and cfg.eval.eval_at == [5, 10]
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg          # nested (config.json of this version)
    assert TrainConfig.from_dict(cfg.flat()) == cfg             # flat (config.json of earlier versions)
    assert set(cfg.to_dict()) == {"out", "iters", "seed", "backend", "lambda_dssim", "sh_degree", "sh_interval",
                                  "batch_views", "batch_scaling", "dist_check_every", "dist_timeout",
                                  "checkpoint_every", *SUBCONFIGS}


def test_configs_of_earlier_versions_load_renamed_options() -> None:
    assert TrainConfig.make(grad_views=2).batch_views == 2  # --grad-views became --batch-views


def test_leaf_names_are_unique_across_subconfigs() -> None:
    names = [f.name for f, _, _ in TrainConfig().leaves()]
    assert len(names) == len(set(names)) == len(leaf_owners())


def test_unknown_keys_are_named() -> None:
    with pytest.raises(TrsplatError, match="bogus"):
        TrainConfig.from_dict({"bogus": 1})
    with pytest.raises(TrsplatError, match=r"optim\.n_random_init"):
        TrainConfig.from_dict({"optim": {"n_random_init": 3}})


@pytest.mark.parametrize("flat, flag", [
    ({"optimizer": "sgd"}, "--optimizer"),
    ({"curvature": "exact"}, "--curvature"),
    ({"iters": 0}, "--iters"),
    ({"downscale": 0.5}, "--downscale"),
    ({"theta1": 1.0}, "--theta1"),
    ({"eps_start": 0.0}, "--eps-start"),
    ({"eps_end": float("nan")}, "--eps-end"),
    ({"step_norm_quantile": 1.5}, "--step-norm-quantile"),
    ({"sh_degree": 4}, "--sh-degree"),
    ({"lambda_dssim": -0.1}, "--lambda-dssim"),
    ({"tr_mass_clamp": "1"}, "--tr-mass-clamp"),
    ({"residual_delta": 0.0}, "--residual-delta"),
    ({"iters": 10, "eval_at": [20]}, "--eval-at"),
    ({"optimizer": "tr", "tr_step": "adam"}, "--tr-step adam needs"),  # (tr's default curvature)
    ({"optimizer": "adam", "curvature": "none", "tr_step": "adam"}, "--tr-step adam needs"),
])
def test_validation_names_the_option(flat, flag) -> None:
    with pytest.raises(TrsplatError, match=flag):
        TrainConfig.make(**flat).validate()


def test_defaults_are_valid_and_every_leaf_is_a_flag() -> None:
    TrainConfig().validate()
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, skip=())
    args = parser.parse_args(["--optimizer", "tr", "--eval-at", "3,6", "--no-lpips", "--init-box", "none",
                              "--tr-quat-norm-cap", "0.2"])
    cfg = config_from_args(args)
    assert cfg.optim.optimizer == "tr" and cfg.eval.eval_at == [3, 6] and cfg.eval.lpips is False
    assert cfg.scene.init_box is None and cfg.optim.tr_quat_norm_cap == 0.2
    assert TrainConfig.from_dict({**TrainConfig().flat(), **RECIPES[DEFAULT_RECIPE], "optimizer": "tr",
                                  "eval_at": [3, 6], "lpips": False, "tr_quat_norm_cap": 0.2}) == cfg


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_recipe_sets_its_options_and_the_given_ones_win(recipe) -> None:
    """Each ``--recipe`` is a valid config holding exactly its values; the options given override it,
    and the options it does not name keep their defaults."""
    values = RECIPES[recipe]
    cfg = config_from_args(build_parser().parse_args(["train", "d", "--out", "o", "--recipe", recipe]))
    cfg.validate()
    flat, plain = cfg.flat(), TrainConfig.make(data="d", out="o").flat()
    assert {k: flat[k] for k in values} == values
    assert {k: v for k, v in flat.items() if k not in values} == {k: v for k, v in plain.items() if k not in values}
    given = config_from_args(build_parser().parse_args(["train", "d", "--out", "o", "--recipe", recipe,
                                                        "--densify", "none", "--optimizer", "adam-tr"]))
    assert given.strategy.densify == "none" and given.optim.optimizer == "adam-tr"


def test_the_default_recipe_is_the_train_command_default() -> None:
    plain = config_from_args(build_parser().parse_args(["train", "d", "--out", "o"]))
    assert plain == TrainConfig.make(data="d", out="o", **RECIPES[DEFAULT_RECIPE])


@pytest.mark.parametrize("argv, warned", [([], True), (["--iters", "7000"], False),
                                          (["--recipe", "3dgs-mcmc"], False), (["--recipe", "tr-mcmc"], True)])
def test_a_long_run_of_the_tr_mcmc_recipe_is_warned_about(monkeypatch, capsys, tmp_path, argv, warned) -> None:
    """tr-mcmc was measured best at 7000 iterations and behind Adam + MCMC at 30 000 (the default
    --iters): `trsplat train` says so when such a run starts its loop (a stub here: the hooks'
    on_start)."""
    import trsplat.training
    from trsplat.cli import main
    from trsplat.training.hooks import StartWarning

    started = []

    def start(cfg, hooks, **_):
        started.append(cfg)
        for hook in hooks:
            if isinstance(hook, StartWarning):  # (the progress bar needs a real trainer)
                hook.on_start(None)
        return {"evals": [{"psnr": 1.0}]}

    monkeypatch.setattr(trsplat.training, "train", start)
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), *argv]) == 0
    assert len(started) == 1
    err = capsys.readouterr().err
    assert ("warning: --iters 30000 with the tr-mcmc recipe" in err) == warned, err
