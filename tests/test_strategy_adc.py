"""3DGS's adaptive density control: the screen-gradient statistic, clone/split/prune/reset as
3DGS does them, the optimiser state of new rows, the schedule of short runs, resume."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.helpers import make_scene, random_gaussians
from trsplat.config import DEFAULT_RECIPE, RECIPES, OptimizerConfig, StrategyConfig, TrainConfig
from trsplat.gaussians import Gaussians
from trsplat.optim.build import build_optimizer
from trsplat.render import render
from trsplat.render.backends import get_backend
from trsplat.strategy import StepInfo, build_strategy
from trsplat.strategy.adc import ADCParams, AdaptiveDensityControl, ndc_grad_norm, rotation_matrices
from trsplat.strategy.build import MIN_EVERY
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import RunDir, Trainer
from trsplat.training.trainer import prepare


# -- the render output the statistic reads ----------------------------------------------------------
def _stages_image(g: Gaussians, cam, backend: str, means2d_leaf: bool = False):
    """The image from the backend's three stages called directly (render() before means2d)."""
    st = get_backend(backend)
    proj = st.project(g.means, g.log_scales, g.quats, g.opacity_logits, g.sh_dc, g.sh_rest, cam, 3)
    bins = st.bin(proj.means2d, proj.radii, proj.depths, cam.width, cam.height, proj.conics, proj.opacities)
    m = proj.means2d.detach().requires_grad_(True) if means2d_leaf else proj.means2d
    features = torch.cat([proj.colors, proj.depths[:, None]], dim=1)
    feat_bg = torch.tensor([1.0, 1.0, 1.0, 0.0])
    out, _ = st.composite(m, proj.conics, features, proj.opacities, bins, cam.width, cam.height, feat_bg)
    return out[..., :3], m, proj.ids


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_render_means2d_leaves_images_and_gradients_unchanged(backend) -> None:
    g, cam = make_scene("ball", 2, 300, 129, 65)
    g.requires_grad_(True)
    out = render(g, cam, backend=backend, background=(1.0, 1.0, 1.0))
    out.means2d.retain_grad()
    weights = torch.rand(out.image.shape, generator=torch.Generator().manual_seed(0))
    (out.image * weights).sum().backward()
    grads = {k: v.grad.clone() for k, v in g.params().items()}
    for v in g.params().values():
        v.grad = None
    image, _, _ = _stages_image(g, cam, backend)
    (image * weights).sum().backward()
    assert torch.equal(out.image, image)
    for k, v in g.params().items():
        assert torch.equal(grads[k], v.grad), k
    # means2d.grad is dL/d(screen position) of the compositor, in full indexing (0 where culled)
    image, leaf, ids = _stages_image(g.detach(), cam, backend, means2d_leaf=True)
    (image * weights).sum().backward()
    expected = torch.zeros(len(g), 2)
    expected[ids] = leaf.grad
    assert torch.equal(out.means2d.grad, expected)
    assert out.means2d.shape == (len(g), 2) and bool((out.radii == 0).any())
    assert torch.equal(out.means2d.detach()[ids], leaf.detach())


def test_ndc_gradient_norm_is_the_pixel_gradient_times_half_the_image_size() -> None:
    grad = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 4.0]])
    assert torch.allclose(ndc_grad_norm(grad, 100, 60), torch.tensor([50.0, 30.0, math.hypot(150.0, 120.0)]))


def _fake_render(grad: torch.Tensor, radii: torch.Tensor, width: int, height: int):
    means2d = torch.zeros_like(grad)
    means2d.grad = grad
    return SimpleNamespace(means2d=means2d, radii=radii, image=torch.zeros(height, width, 3))


def test_statistic_averages_visible_views_and_undoes_the_view_average() -> None:
    strategy = AdaptiveDensityControl(ADCParams(start=10, stop=100, every=10), extent=1.0)
    g = random_gaussians(3, 0)
    info = StepInfo(1, [0, 1], renders=[
        _fake_render(torch.tensor([[1e-6, 0.0], [0.0, 2e-6], [5.0, 5.0]]), torch.tensor([2, 3, 0]), 100, 50),
        _fake_render(torch.tensor([[3e-6, 0.0], [0.0, 0.0], [0.0, 0.0]]), torch.tensor([1, 0, 0]), 100, 50),
    ])
    strategy.step_post_backward(g, None, info)  # no refinement at iteration 1
    # each view's loss was divided by 2: its gradients count twice; culled views do not count
    assert torch.allclose(strategy.grad_accum, torch.tensor([2e-6 * 50 + 6e-6 * 50, 4e-6 * 25, 0.0]))
    assert torch.equal(strategy.count, torch.tensor([2.0, 1.0, 0.0]))


# -- clone, split, prune, reset ---------------------------------------------------------------------
def _population(n: int, seed: int, extent: float) -> Gaussians:
    """Half small (largest scale 0.005·extent), half large (0.05·extent), random rotations, opaque."""
    gen = torch.Generator().manual_seed(seed)
    large = torch.arange(n) % 2 == 1
    base = torch.where(large, math.log(0.05 * extent), math.log(0.005 * extent))
    log_scales = base[:, None] - torch.rand(n, 3, generator=gen) * torch.tensor([0.0, 1.0, 2.0])
    return Gaussians(means=torch.randn(n, 3, generator=gen), log_scales=log_scales,
                     quats=torch.randn(n, 4, generator=gen), opacity_logits=torch.full((n,), 2.0),
                     sh_dc=torch.randn(n, 1, 3, generator=gen), sh_rest=torch.randn(n, 15, 3, generator=gen)
                     ).requires_grad_(True)


def _optimizer(g: Gaussians, name: str):
    optimizer, _ = build_optimizer(OptimizerConfig(optimizer=name, curvature_interval=1), g.params(), extent=1.0,
                                   iters=100, seed=0)
    gen = torch.Generator().manual_seed(1)
    for _ in range(2):  # some non-zero state, curvature included
        for p in g.params().values():
            p.grad = torch.randn(p.shape, generator=gen) * 1e-3
        if name == "tr":
            optimizer.step(lambda _: {k: torch.rand(v.shape, generator=gen) for k, v in g.params().items()})
        else:
            optimizer.step()
    return optimizer


def _per_gaussian_state(optimizer) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for group in optimizer.param_groups:
        p = group["params"][0]
        out[group["name"]] = {k: v for k, v in optimizer.state[p].items()
                              if isinstance(v, torch.Tensor) and v.dim() > 0}
    return out


def _assert_state_matches_params(g: Gaussians, optimizer) -> None:
    params = g.params()
    for group in optimizer.param_groups:
        p = group["params"][0]
        assert p is params[group["name"]]
        for key, v in optimizer.state[p].items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                assert v.shape == p.shape, (group["name"], key)


@pytest.mark.parametrize("optimizer_name, policy", [("adam", "zero"), ("tr", "zero"), ("adam-tr", "inherit"),
                                                    ("tr", "inherit-curvature")])
def test_refine_clones_small_and_splits_large_gaussians_as_3dgs(optimizer_name, policy) -> None:
    extent, n = 2.0, 12
    g = _population(n, 0, extent)
    optimizer = _optimizer(g, optimizer_name)
    state_before = {k: {s: v.clone() for s, v in st.items()} for k, st in _per_gaussian_state(optimizer).items()}
    before = {k: v.detach().clone() for k, v in g.params().items()}
    params = ADCParams(start=0, stop=1000, every=1, reset_every=500, state_policy=policy)
    strategy = AdaptiveDensityControl(params, extent=extent, seed=3)
    # mean statistics: rows 0..3 at or above the threshold (row 2 exactly on it), the rest below
    strategy.grad_accum = torch.tensor([6e-4, 3e-4, 2e-4, 9e-4] + [1e-4] * (n - 4))
    strategy.count = torch.tensor([2.0, 1.0, 1.0, 3.0] + [1.0] * (n - 4))
    record = strategy.refine(g, optimizer, iteration=100)
    clone, split = torch.tensor([0, 2]), torch.tensor([1, 3])  # even rows small, odd rows large
    assert record == {"iteration": 100, "before": n, "cloned": 2, "split": 2, "pruned": 0, "after": n + 2 + 2}
    kept = torch.tensor([i for i in range(n) if i not in (1, 3)])
    order = torch.cat([kept, clone, split, split])  # survivors, clones, then two children per split parent
    after = {k: v.detach() for k, v in g.params().items()}
    for name in ("quats", "opacity_logits", "sh_dc", "sh_rest"):
        assert torch.equal(after[name], before[name][order]), name
    m = len(kept) + len(clone)
    assert torch.equal(after["means"][:m], before["means"][order[:m]])
    assert torch.equal(after["log_scales"][:m], before["log_scales"][order[:m]])
    assert torch.allclose(after["log_scales"][m:], before["log_scales"][order[m:]] - math.log(1.6))
    assert not torch.equal(after["means"][m:m + 2], after["means"][m + 2:])  # two different children
    _assert_state_matches_params(g, optimizer)
    for name, st in _per_gaussian_state(optimizer).items():
        for key, v in st.items():
            old = state_before[name][key]
            assert torch.equal(v[:len(kept)], old[kept]), (name, key)  # survivors keep their state
            inherit = policy == "inherit" or (policy == "inherit-curvature" and key in ("exp_avg_sq", "curv_ema"))
            expected_new = old[order[len(kept):]] if inherit else torch.zeros_like(v[len(kept):])
            assert torch.equal(v[len(kept):], expected_new), (name, key, policy)


def test_split_children_are_drawn_from_the_parent_gaussian() -> None:
    """Whitened by the parent's rotation and scales, the children's offsets are N(0, I)."""
    extent, n = 1.0, 4000
    g = _population(n, 1, extent)
    g.log_scales.data[:] = torch.log(torch.tensor([0.2, 0.05, 0.01]))  # all large and anisotropic
    optimizer = _optimizer(g, "adam")
    before = {k: v.detach().clone() for k, v in g.params().items()}
    strategy = AdaptiveDensityControl(ADCParams(), extent=extent, seed=0)
    strategy.split(g, optimizer, torch.arange(n))
    assert len(g) == 2 * n
    parents = torch.arange(n).repeat(2)
    rot = rotation_matrices(before["quats"][parents])
    offsets = g.means.detach() - before["means"][parents]
    z = (rot.transpose(1, 2) @ offsets[:, :, None]).squeeze(-1) / torch.exp(before["log_scales"][parents])
    assert z.mean(0).abs().max() < 0.05
    assert (torch.cov(z.T) - torch.eye(3)).abs().max() < 0.08


def test_prune_drops_transparent_and_after_the_first_reset_oversized_gaussians() -> None:
    extent = 1.0
    g = _population(6, 2, extent)
    g.opacity_logits.data[:] = torch.logit(torch.tensor([0.004, 0.0051, 0.5, 0.5, 0.5, 0.5]))
    g.log_scales.data[2] = math.log(0.11)  # larger than 0.1 extent
    optimizer = _optimizer(g, "tr")
    means = g.means.detach().clone()
    params = ADCParams(reset_every=300)
    strategy = AdaptiveDensityControl(params, extent=extent)
    strategy.grad_accum, strategy.count = torch.zeros(6), torch.zeros(6)
    assert strategy.refine(g, optimizer, iteration=300)["after"] == 5     # only the transparent one
    strategy.grad_accum, strategy.count = torch.zeros(5), torch.zeros(5)
    assert strategy.refine(g, optimizer, iteration=400)["after"] == 4     # and then the oversized one
    assert torch.equal(g.means.detach(), means[[1, 3, 4, 5]])
    _assert_state_matches_params(g, optimizer)


@pytest.mark.parametrize("optimizer_name", ["adam", "tr"])
def test_opacity_reset_clamps_to_0_01_and_zeroes_the_opacity_state(optimizer_name) -> None:
    g = _population(8, 3, 1.0)
    g.opacity_logits.data[:] = torch.linspace(-6.0, 4.0, 8)
    optimizer = _optimizer(g, optimizer_name)
    other = {k: {s: v.clone() for s, v in st.items()} for k, st in _per_gaussian_state(optimizer).items()}
    before = g.opacities.detach().clone()
    strategy = AdaptiveDensityControl(ADCParams(start=10, stop=1000, every=1000, reset_every=50), extent=1.0)
    strategy.step_post_backward(g, optimizer, StepInfo(50, [], renders=[]))
    assert torch.allclose(g.opacities.detach(), torch.clamp(before, max=0.01), rtol=1e-6)
    for name, st in _per_gaussian_state(optimizer).items():
        for key, v in st.items():
            assert torch.equal(v, torch.zeros_like(v) if name == "opacity_logits" else other[name][key]), (name, key)


# -- the schedule of short runs ---------------------------------------------------------------------
@pytest.mark.parametrize("iters, scale, expected", [
    (30_000, None, (500, 15_000, 100, 3000)),
    (60_000, None, (500, 15_000, 100, 3000)),       # longer runs keep 3DGS's schedule
    (7000, None, (117, 3500, 23, 700)),             # 7000 / 30000 of every iteration option
    (1500, None, (25, 750, MIN_EVERY, 150)),        # the refinement interval stops at MIN_EVERY
    (7000, 1.0, (500, 15_000, 100, 3000)),          # --densify-steps-scale 1: 3DGS's iterations as they are
])
def test_iteration_options_scale_with_the_run_length(iters, scale, expected) -> None:
    strategy = build_strategy(StrategyConfig(densify="adc", densify_steps_scale=scale), OptimizerConfig(),
                              iters=iters, extent=1.0)
    p = strategy.params
    assert (p.start, p.stop, p.every, p.reset_every) == expected


def test_adc_without_the_scene_extent_is_refused() -> None:
    from trsplat.errors import TrsplatError

    with pytest.raises(TrsplatError, match="extent"):
        build_strategy(StrategyConfig(densify="adc"), OptimizerConfig(), iters=100)


def test_white_background_adds_a_reset_at_the_start() -> None:
    cfg = StrategyConfig(densify="adc", densify_steps_scale=1.0)
    assert build_strategy(cfg, iters=100, extent=1.0, background=(1.0, 1.0, 1.0)).white_background
    assert not build_strategy(cfg, iters=100, extent=1.0, background=(0.0, 0.0, 0.0)).white_background


# -- training and resume --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


def _train(cfg: TrainConfig, interrupt_at: int | None = None):
    """Train as ``trsplat train`` with the strategy the config names (built as the trainer will)."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    scene, gaussians = prepare(cfg)
    strategy = build_strategy(cfg.strategy, cfg.optim, iters=cfg.iters, extent=scene.extent,
                              background=scene.background, seed=cfg.seed)
    trainer = Trainer(cfg, scene, gaussians, strategy=strategy, hooks=[])
    if interrupt_at is not None:
        original = trainer.train_step

        def step(it):
            if it == interrupt_at:
                import os
                import signal
                os.kill(os.getpid(), signal.SIGINT)
            return original(it)

        trainer.train_step = step
    return trainer, trainer.run


def _resume(out: Path):
    run_dir = RunDir(out)
    cfg = run_dir.read_config()
    scene, gaussians = prepare(cfg)
    strategy = build_strategy(cfg.strategy, cfg.optim, iters=cfg.iters, extent=scene.extent,
                              background=scene.background, seed=cfg.seed)
    trainer = Trainer(cfg, scene, gaussians, strategy=strategy, hooks=[])
    trainer.load_checkpoint(run_dir.load_checkpoint())
    return trainer, trainer.run


def densify_config(scene: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(data=str(scene), out=str(out), iters=12, eval_at=[12], n_random_init=300, lpips=False,
                backend="reference", checkpoint_every=100, sh_interval=4, n_saved_renders=0,
                densify_steps_scale=1.0, densify_start=2, densify_stop=11, densify_every=3, opacity_reset_every=6,
                densify_grad_threshold=1e-5, curvature_interval=3, eps_start=1e-4, eps_end=1e-6)
    base.update(overrides)
    return TrainConfig.make(**base)


def optimizer_options(name: str) -> dict:
    """Config overrides of a parametrised optimizer: ``tr-adam-opacity`` is tr with
    ``--tr-opacity-step adam`` (its extra state must travel and be resized as well)."""
    return dict(optimizer="tr", tr_opacity_step="adam") if name == "tr-adam-opacity" else dict(optimizer=name)


@pytest.mark.parametrize("optimizer", ["adam", "tr", "adam-tr", "tr-adam-opacity"])
def test_resume_is_bit_identical_across_densification(tiny_scene, tmp_path, optimizer) -> None:
    opts = optimizer_options(optimizer)
    full, run = _train(densify_config(tiny_scene, tmp_path / "full", densify="adc", **opts))
    run()
    history = full.strategy.history
    assert [r["iteration"] for r in history] == [3, 6, 9] and history[0]["after"] != 300
    assert history[-1]["after"] == len(full.gaussians)
    for record in history:  # a clone adds one Gaussian, a split replaces one by two
        assert record["before"] + record["cloned"] + record["split"] - record["pruned"] == record["after"]
    assert _metrics(tmp_path / "full")["densify"] == history
    _assert_state_matches_params(full.gaussians, full.optimizer)
    split, run = _train(densify_config(tiny_scene, tmp_path / "split", densify="adc", **opts),
                        interrupt_at=7)  # between two refinements: the statistics travel in the checkpoint
    with pytest.raises(Exception, match="interrupted at iteration 7"):
        run()
    resumed, run = _resume(tmp_path / "split")
    run()
    a = torch.load(tmp_path / "full" / RunDir.CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "split" / RunDir.CHECKPOINT, weights_only=False)
    for name, tensor in a["params"].items():
        assert torch.equal(tensor, b["params"][name]), name
    assert resumed.strategy.history == history
    assert _metrics(tmp_path / "split")["densify"] == history


def _metrics(out: Path) -> dict:
    return json.loads((out / RunDir.METRICS).read_text())


def test_a_run_without_densification_writes_no_records(tiny_scene, tmp_path) -> None:
    _, run = _train(densify_config(tiny_scene, tmp_path / "run", densify="none"))
    run()
    assert "densify" not in _metrics(tmp_path / "run")


def test_the_densify_study_preset(tmp_path) -> None:
    """15 variants (5 optimisers x none/adc/mcmc) and ``trsplat train``'s default recipe on the
    paper's scenes, 7000 iterations: one Gaussian budget per scene for every mcmc run, and no
    evaluation on an ADC opacity reset."""
    from trsplat.bench.study.spec import load_spec

    spec = load_spec(preset="densify", data_root=tmp_path)
    assert spec.iters == 7000 and spec.seeds == [0, 1, 2] and spec.reference == "adam+none"
    optimizers = ("adam", "tr", "tr-none-paper-printed-bounds", "tr-none-paper-x16-op1", "tr-none-paper-adamop")
    assert sorted(spec.variants) == sorted([f"{o}+{d}" for o in optimizers for d in ("none", "adc", "mcmc")]
                                           + ["tr-mcmc-recipe"])
    for scene in spec.scenes:
        configs = {v: spec.run_config(scene, v, 0, tmp_path) for v in spec.variants}
        assert len({c.strategy.cap_max for c in configs.values()}) == 1
        assert len({(c.scene.n_random_init, c.scene.downscale) for c in configs.values()}) == 1
        assert configs["tr-none-paper-printed-bounds+adc"].optim.tr_bounds == "paper"
        x16 = configs["tr-none-paper-x16-op1+adc"]
        assert (x16.optim.curvature, x16.optim.eps_start, x16.optim.eps_end) == ("none", 1.6e-5, 1.6e-7)
        assert x16.optim.tr_opacity_eps_scale == 0.0625 and x16.strategy.densify == "adc"
        adamop = configs["tr-none-paper-adamop+mcmc"]
        assert (adamop.optim.curvature, adamop.optim.tr_opacity_step, adamop.optim.eps_start) == ("none", "adam", 1e-6)
        recipe = configs["tr-mcmc-recipe"]   # the recipe is the adamop+mcmc variant with two MCMC options
        assert recipe.optim == adamop.optim and recipe.strategy.mcmc_noise_in_radius
        assert recipe.strategy.opacity_reg_until_stop and recipe.strategy.densify == "mcmc"
        default = TrainConfig.make(data="x", out="y", **RECIPES[DEFAULT_RECIPE])
        assert default.optim == recipe.optim     # and the strategy but for the scene's budget
        assert dataclasses.replace(default.strategy, cap_max=recipe.strategy.cap_max) == recipe.strategy
        adc = build_strategy(configs["adam+adc"].strategy, configs["adam+adc"].optim, iters=spec.iters, extent=1.0)
        resets = set(range(adc.params.reset_every, adc.params.stop, adc.params.reset_every))
        assert resets and not resets & set(spec.eval_iterations())
