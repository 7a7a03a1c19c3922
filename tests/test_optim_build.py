"""Schedulers and build_optimizer: the optimizer, its groups and the schedules a config asks for."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from trsplat.optim.adam import AdamTrustRegion, GaussianAdam
from trsplat.optim.build import build_optimizer
from trsplat.optim.hellinger import TrustRegionConfig
from trsplat.optim.schedules import ExponentialDecay, exponential_decay
from trsplat.optim.tr import TrustRegionNewton

SHAPES = {"means": (5, 3), "log_scales": (5, 3), "quats": (5, 4), "opacity_logits": (5,), "sh_dc": (5, 1, 3),
          "sh_rest": (5, 15, 3)}
TR_CONFIG = TrustRegionConfig(bounds="paper", quat_norm_cap=0.2)


def params() -> dict[str, torch.Tensor]:
    return {k: torch.zeros(shape, requires_grad=True) for k, shape in SHAPES.items()}


def config(**over) -> SimpleNamespace:
    """An object with the optimizer fields of TrainConfig and ``trust_region()``."""
    fields = dict(optimizer="adam", lr_means=1.6e-4, lr_means_final=1.6e-6, lr_means_max_steps=30_000,
                  lr_sh_dc=2.5e-3, lr_sh_rest=2.5e-3 / 20, lr_opacity=0.025, lr_scale=5e-3, lr_rotation=1e-3,
                  adam_eps=1e-15, adam_beta1=0.9, adam_beta2=0.999, adam_impl="fused", eps_start=1e-6, eps_end=1e-8, curvature="gnb",
                  curvature_interval=7, n_probes=1,
                  theta1=0.8, theta2=0.99, guard="abs", guard_floor=1e-10, bias_correction=True,
                  step_norm="median-radius", step_norm_quantile=0.3, tr_radius="fixed", tr_radius_test_every=10,
                  tr_radius_test="step", tr_radius_test_views=1, tr_radius_scale_max=1024.0,
                  tr_radius_opacity_max=None, tr_damping="none", tr_radius_scale_min=None,
                  tr_opacity_step="newton", tr_step="newton")
    return SimpleNamespace(**{**fields, **over}, trust_region=lambda: TR_CONFIG)


def groups(opt: torch.optim.Optimizer, key: str) -> dict[str, float]:
    return {g["name"]: g[key] for g in opt.param_groups}


def test_exponential_decay_scheduler() -> None:
    """Sets the key of the named group (or of all) to exponential_decay of the iteration, also
    after load_state_dict has replaced the param groups."""
    opt = GaussianAdam(params(), {"means": 1.0, "sh_dc": 2.0, "sh_rest": 3.0, "opacity_logits": 4.0,
                                  "log_scales": 5.0, "quats": 6.0})
    lr = ExponentialDecay(opt, key="lr", group="means", start=1e-2, end=1e-4, max_steps=100)
    everywhere = ExponentialDecay(opt, key="tr_eps", start=1e-5, end=1e-7, max_steps=50)
    for it in (1, 37, 100, 250):
        lr.step(it)
        everywhere.step(it)
        assert groups(opt, "lr") == {"means": exponential_decay(it, 1e-2, 1e-4, 100), "sh_dc": 2.0, "sh_rest": 3.0,
                                     "opacity_logits": 4.0, "log_scales": 5.0, "quats": 6.0}
        assert set(groups(opt, "tr_eps").values()) == {exponential_decay(it, 1e-5, 1e-7, 50)}
    assert groups(opt, "lr")["means"] == exponential_decay(100, 1e-2, 1e-4, 100) == pytest.approx(1e-4, rel=1e-12)
    opt.load_state_dict(opt.state_dict())
    lr.step(1)
    assert groups(opt, "lr")["means"] == exponential_decay(1, 1e-2, 1e-4, 100)
    with pytest.raises(ValueError, match="no param group named"):
        ExponentialDecay(opt, key="lr", group="colour", start=1.0, end=0.1, max_steps=10)
    with pytest.raises(ValueError, match="positive"):
        ExponentialDecay(opt, key="lr", group="means", start=0.0, end=0.1, max_steps=10)


@pytest.mark.parametrize("max_steps", [30_000, None])
def test_build_adam(max_steps) -> None:
    """3DGS Adam: today's group order, lrs with the scene extent, the position lr decaying over
    lr_means_max_steps (or the run)."""
    cfg = config(lr_means_max_steps=max_steps)
    opt, schedulers = build_optimizer(cfg, params(), extent=2.5, iters=700, seed=3)
    assert type(opt) is GaussianAdam and opt.trust_region is None
    assert groups(opt, "lr") == {"means": 1.6e-4 * 2.5, "sh_dc": 2.5e-3, "sh_rest": 2.5e-3 / 20, "opacity_logits": 0.025,
                                 "log_scales": 5e-3, "quats": 1e-3}
    assert opt.defaults["eps"] == 1e-15
    assert opt.defaults["fused"] is True  # adam_impl="fused"
    for s in schedulers:
        s.step(400)
    assert groups(opt, "lr")["means"] == exponential_decay(400, 1.6e-4 * 2.5, 1.6e-6 * 2.5, max_steps or 700)


def test_build_adam_single_tensor() -> None:
    """--adam-impl single-tensor: torch's per-op Adam (neither fused nor foreach)."""
    opt, _ = build_optimizer(config(adam_impl="single-tensor"), params(), extent=1.0, iters=10, seed=0)
    assert not opt.defaults["fused"] and not opt.defaults["foreach"]


@pytest.mark.parametrize("max_steps", [30_000, None])
def test_build_adam_tr(max_steps) -> None:
    """ADAM-TR: Adam plus the config's trust region; ε decays like the position lr, over
    lr_means_max_steps (or the run)."""
    cfg = config(optimizer="adam-tr", lr_means_max_steps=max_steps)
    opt, schedulers = build_optimizer(cfg, params(), extent=2.5, iters=700, seed=3)
    assert type(opt) is AdamTrustRegion and opt.trust_region.config == TR_CONFIG
    assert set(groups(opt, "tr_eps").values()) == {1e-6}
    for s in schedulers:
        s.step(400)
    assert groups(opt, "lr")["means"] == exponential_decay(400, 1.6e-4 * 2.5, 1.6e-6 * 2.5, max_steps or 700)
    assert set(groups(opt, "tr_eps").values()) == {exponential_decay(400, 1e-6, 1e-8, max_steps or 700)}


def test_build_tr() -> None:
    """3DGS²-TR: groups in the order of the params, the config's hyperparameters, ε over the run,
    the generator seeded with seed + 7919."""
    opt, schedulers = build_optimizer(config(optimizer="tr"), params(), extent=2.5, iters=700, seed=3)
    assert type(opt) is TrustRegionNewton and opt.trust_region.config == TR_CONFIG
    assert [g["name"] for g in opt.param_groups] == list(SHAPES)
    assert (opt.curvature, opt.interval) == ("gnb", 7)
    for key, value in dict(theta1=0.8, theta2=0.99, guard="abs", guard_floor=1e-10, bias_correction=True,
                           step_norm="median-radius", step_norm_quantile=0.3).items():
        assert set(groups(opt, key).values()) == {value}, key
    assert torch.equal(opt.state["generator"], torch.Generator().manual_seed(3 + 7919).get_state())
    for s in schedulers:
        s.step(400)
    assert set(groups(opt, "tr_eps").values()) == {exponential_decay(400, 1e-6, 1e-8, 700)}
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(config(optimizer="sgd"), params(), extent=1.0, iters=10, seed=0)
    assert opt.radius_control is None and "adaptive_radius" not in opt.state_dict()
    assert opt.opacity_step == "newton"
    opt, _ = build_optimizer(config(optimizer="tr", tr_opacity_step="adam", lr_opacity=0.03, adam_eps=1e-8), params(),
                             extent=1.0, iters=10, seed=0)
    assert (opt.opacity_step, opt.opacity_lr, opt.adam_eps) == ("adam", 0.03, 1e-8)
    assert opt.step_rule == "newton"
    opt, _ = build_optimizer(config(optimizer="tr", curvature="none", step_norm="none", tr_step="adam"), params(),
                             extent=1.0, iters=10, seed=0)
    assert opt.step_rule == "adam"


def test_build_tr_adaptive_radius() -> None:
    """``tr_radius="adaptive"`` gives the optimizer a ratio-test control with the config's test
    interval, starting at κ = 1; any other mode is refused."""
    opt, _ = build_optimizer(config(optimizer="tr", tr_radius="adaptive", tr_radius_test_every=4), params(),
                             extent=1.0, iters=10, seed=0)
    assert opt.radius_control is not None
    assert (opt.radius_control.test_every, opt.radius_control.scale) == (4, 1.0)
    assert opt.state_dict()["adaptive_radius"]["scale"] == 1.0
    c = opt.radius_control
    assert (c.test_on, c.held_out_views, c.scale_max, c.opacity_scale_max, c.damping) == ("step", 1, 1024.0, None, "none")
    opt, _ = build_optimizer(config(optimizer="tr", tr_radius="adaptive", tr_radius_test="held-out", tr_radius_test_views=2,
                                    tr_radius_scale_max=16.0, tr_radius_opacity_max=1.0, tr_damping="lm",
                                    tr_radius_scale_min=1.0),
                             params(), extent=1.0, iters=10, seed=0)
    c = opt.radius_control
    assert (c.test_on, c.held_out_views, c.scale_max, c.opacity_scale_max, c.damping) == ("held-out", 2, 16.0, 1.0, "lm")
    assert c.scale_min == 1.0
    with pytest.raises(ValueError, match="unknown radius mode"):
        build_optimizer(config(optimizer="tr", tr_radius="per-gaussian"), params(), extent=1.0, iters=10, seed=0)
