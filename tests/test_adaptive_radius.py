"""The adaptive trust-region radius (``--tr-radius adaptive``): the ratio-test rule, the model's
predicted decrease against exact quadratics, state_dict round trips and the fixed mode's identity."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch

from tests.test_optim_optimizers import LeastSquares, clone, raw_params
from tests.test_train import _config, _interrupt_at
from trsplat.errors import TrsplatError
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import RunDir, resume, train
from trsplat.training.plots import RunCurves, _panels
from trsplat.optim import radius as R
from trsplat.optim.radius import AdaptiveRadius, StepLoss
from trsplat.optim.schedules import ExponentialDecay
from trsplat.optim.tr import TrustRegionNewton


def test_rule_shrinks_grows_and_stays_in_its_bounds() -> None:
    c = AdaptiveRadius(test_every=5)
    assert [c.due(t) for t in range(1, 11)] == [False] * 4 + [True] + [False] * 4 + [True]
    assert c.update(1.0, 0.1, 1.0) == pytest.approx(0.1) and c.scale == R.SHRINK       # over-promised
    assert c.update(1.0, 0.5, 1.0) == 0.5 and c.scale == R.SHRINK                        # in between: kept
    assert c.update(1.0, 0.9, 0.2) == 0.9 and c.scale == R.SHRINK                        # held, inside the bound
    assert c.update(1.0, 0.9, R.BOUND_SHARE) == 0.9 and c.scale == R.SHRINK * R.GROW    # held, on the bound
    assert c.update(0.0, 1.0, 1.0) is None and c.update(-1.0, 1.0, 1.0) is None          # no predicted decrease
    assert c.update(1.0, math.nan, 1.0) is None and c.scale == 1.0
    stats = c.window_statistics()
    assert (stats["tests"], stats["skipped"]) == (7, 3)
    assert stats["rho_mean"] == pytest.approx((0.1 + 0.5 + 0.9 + 0.9) / 4)
    assert (stats["accept_fraction"], stats["shrink_fraction"], stats["grow_fraction"]) == (1.0, 0.25, 0.25)
    assert stats["scale_mean"] == pytest.approx(2 ** ((3 * -1 + 4 * 0) / 7))
    c.reset_window()
    assert c.window_statistics()["tests"] == 0 and c.window_statistics()["rho_mean"] is None
    for _ in range(40):
        c.update(1.0, -1.0, 1.0)
    assert c.scale == R.SCALE_MIN and c.window_statistics()["accept_fraction"] == 0.0
    for _ in range(80):
        c.update(1.0, 1.0, 1.0)
    assert c.scale == R.SCALE_MAX
    other = AdaptiveRadius()
    other.load_state_dict(c.state_dict())
    assert other.state_dict() == c.state_dict() and other.window_statistics() == c.window_statistics()
    with pytest.raises(ValueError, match="test_every"):
        AdaptiveRadius(test_every=0)


class Separable:
    """L = ½ Σ a (x − x*)² over every tensor: its exact Hessian is diag(a), so the diagonal model
    with the exact gradient and D = a predicts every step's decrease exactly (ρ = 1)."""

    def __init__(self, params: dict[str, torch.Tensor], seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.target = {k: v.detach() + 0.05 * torch.randn(v.shape, generator=g) for k, v in params.items()}
        self.weight = {k: 0.5 + torch.rand(v.shape, generator=g) for k, v in params.items()}

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return sum(0.5 * (self.weight[k].double() * (v.double() - self.target[k].double()) ** 2).sum()
                   for k, v in params.items())

    def curvature(self, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: w.clone() for k, w in self.weight.items()}


def _step(opt: TrustRegionNewton, params: dict[str, torch.Tensor], problem, closure=None) -> float:
    """One step with the gradient of ``problem.loss`` and a StepLoss on the same loss."""
    loss = problem.loss(params)
    loss.backward()
    with torch.no_grad():
        opt.step(closure, StepLoss(float(loss.detach()), lambda: float(problem.loss(params))))
    return float(loss.detach())


@pytest.mark.parametrize("curvature", ["hutchinson", "none"])
def test_the_model_predicts_an_exact_quadratic(curvature: str) -> None:
    """With the exact curvature (θ₂ = 0) the model is the loss: every test gives ρ = 1 whether
    or not coordinates are clipped. Without curvature (a linear model) ρ = 1 + ½ s·a·s / g·s,
    below 1 and known: checked against that value."""
    params = raw_params(40, 1)
    problem = Separable(params, 2)
    opt = TrustRegionNewton(params, curvature=curvature, interval=1, theta1=0.0, theta2=0.0, tr_eps=1e-3,
                            radius="adaptive", radius_test_every=1)
    for _ in range(6):
        before = {k: v.detach().clone() for k, v in params.items()}
        grads_of = problem.loss(params)
        grads = torch.autograd.grad(grads_of, list(params.values()))
        _step(opt, params, problem, problem.curvature)
        s = {k: params[k].detach().double() - before[k].double() for k in params}
        gs = sum(float((g.double() * s[k]).sum()) for g, k in zip(grads, params))
        sas = sum(float((problem.weight[k].double() * s[k] ** 2).sum()) for k in params)
        expected = 1.0 if curvature == "hutchinson" else (-gs - 0.5 * sas) / -gs
        assert opt.radius_control.last_rho == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert opt.radius_control.window_statistics()["tests"] == 6


def test_the_rule_acts_on_the_radius() -> None:
    """A loss that rises after every step shrinks κ at each test, and the next steps are shorter;
    exact predictions of sign steps (curvature none: every coordinate on the bound) grow it."""
    params = raw_params(30, 3)
    problem = Separable(params, 4)
    opt = TrustRegionNewton(params, curvature="none", tr_eps=1e-4, radius="adaptive", radius_test_every=2)
    sizes = []
    for t in range(1, 7):
        before = params["means"].detach().clone()
        loss = problem.loss(params)
        loss.backward()
        opt.step(None, StepLoss(float(loss.detach()), lambda: float(loss.detach()) + 1.0) if t % 2 == 0 else None)
        sizes.append(float((params["means"].detach() - before).abs().max()))
    assert opt.radius_control.scale == R.SHRINK ** 3
    assert sizes[-1] < sizes[0]
    lin = TrustRegionNewton(clone(params), curvature="none", tr_eps=1e-4, radius="adaptive", radius_test_every=1)
    p = {g["name"]: g["params"][0] for g in lin.param_groups}
    c = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(5)) for k, v in p.items()}
    linear = lambda q: sum((c[k].double() * v.double()).sum() for k, v in q.items())  # noqa: E731
    for _ in range(3):
        loss = linear(p)
        loss.backward()
        lin.step(None, StepLoss(float(loss), lambda: float(linear(p))))
        assert lin.radius_control.last_rho == pytest.approx(1.0, rel=1e-3)
    assert lin.radius_control.scale == R.GROW ** 3


def test_a_due_test_needs_the_step_loss() -> None:
    params = raw_params(5, 6)
    opt = TrustRegionNewton(params, curvature="none", radius="adaptive", radius_test_every=2)
    assert not opt.ratio_test_due()
    sum((v ** 2).sum() for v in params.values()).backward()
    opt.step()  # step 1: no test
    assert opt.ratio_test_due()
    sum((v ** 2).sum() for v in params.values()).backward()
    with pytest.raises(ValueError, match="ratio test of the adaptive radius is due"):
        opt.step()
    assert not TrustRegionNewton(clone(params)).ratio_test_due()
    with pytest.raises(ValueError, match="unknown radius mode"):
        TrustRegionNewton(clone(params), radius="global")


def _run(params, problem, steps, *, curvature, resume_at=None, radius="adaptive", **options):
    def make():
        opt = TrustRegionNewton(params, curvature=curvature, interval=3, seed=5, radius=radius, radius_test_every=2,
                                **options)
        return opt, [ExponentialDecay(opt, key="tr_eps", start=1e-3, end=1e-5, max_steps=steps)]

    opt, schedulers = make()
    for t in range(1, steps + 1):
        if t == resume_at:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            opt, schedulers = make()
            opt.load_state_dict(torch.load(buf, weights_only=True))
        loss = problem.loss(params)
        loss.backward()
        for s in schedulers:
            s.step(t)
        step_loss = StepLoss(float(loss), lambda: float(problem.loss(params))) if opt.ratio_test_due() else None
        opt.step(problem.curvature_closure(params, "gnb" if curvature == "gnb" else "hutchinson"), step_loss)
        opt.zero_grad()
    return opt


ROUND_TRIP_OPTIONS = [
    dict(),
    dict(radius_test_on="held-out", radius_held_out_views=2, radius_scale_max=16.0, radius_opacity_scale_max=1.0),
    dict(radius_test_on="held-out", radius_scale_max=16.0, radius_opacity_scale_max=1.0, damping="lm"),
    dict(radius_test_on="next-slope", radius_scale_max=16.0, radius_opacity_scale_max=1.0, damping="lm"),
]


@pytest.mark.parametrize("curvature,options", [(c, o) for c in ("hutchinson", "gnb", "none")
                                               for o in ROUND_TRIP_OPTIONS if c != "none" or "damping" not in o])
def test_state_dict_round_trip_continues_identically(curvature: str, options: dict) -> None:
    """Saving and loading mid-run (between two tests) continues bit-identically: parameters, κ,
    the window's statistics, μ of the damping and the held-out views' generator."""
    params = raw_params(60, 7)
    problem = LeastSquares(params, 8)
    resumed_params = clone(params)
    straight = _run(params, problem, 15, curvature=curvature, **options)
    # a next-slope test is finished one step after its step: resume right after a test step (8)
    resume_at = 9 if options.get("radius_test_on") == "next-slope" else 8
    resumed = _run(resumed_params, problem, 15, curvature=curvature, resume_at=resume_at, **options)
    for k in params:
        assert torch.equal(params[k], resumed_params[k]), k
    assert straight.radius_control.state_dict() == resumed.radius_control.state_dict()
    assert straight.radius_control.window.tests == 7
    fixed = _run(clone(params), problem, 3, curvature=curvature, radius="fixed")
    with pytest.raises(ValueError, match="radius mode"):
        fixed.load_state_dict(straight.state_dict())


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


NEXT_SLOPE = dict(tr_radius_test="next-slope", tr_radius_scale_max=16.0, tr_radius_opacity_max=1.0)
HELD_OUT_LM = dict(tr_radius_test="held-out", tr_radius_test_views=2, tr_radius_scale_max=16.0,
                   tr_radius_opacity_max=1.0, tr_damping="lm")


@pytest.mark.parametrize("curvature,options", [("hutchinson", {}), ("none", {}), ("hutchinson", HELD_OUT_LM),
                                                       ("none", NEXT_SLOPE)])
def test_training_records_the_ratio_test_and_resumes_identically(tiny_scene, tmp_path, monkeypatch,
                                                                 curvature: str, options: dict) -> None:
    """A trained run writes the ratio-test record at each eval (tests since the previous eval) and
    draws its panels; an interrupted run resumes to the same parameters and records (also with
    held-out views, the opacity cap and the damping)."""
    extra = dict(optimizer="tr", curvature=curvature, curvature_interval=3, eps_start=1e-4, eps_end=1e-6,
                 tr_radius="adaptive", tr_radius_test_every=2, **options)
    train(_config(tiny_scene, tmp_path / "full", **extra))
    with monkeypatch.context() as m:
        _interrupt_at(m, 9)
        with pytest.raises(Exception, match="interrupted at iteration 9"):
            train(_config(tiny_scene, tmp_path / "split", **extra))
    resume(tmp_path / "split")
    full = torch.load(tmp_path / "full" / RunDir.CHECKPOINT, weights_only=False)
    split = torch.load(tmp_path / "split" / RunDir.CHECKPOINT, weights_only=False)
    for name, tensor in full["params"].items():
        assert torch.equal(tensor, split["params"][name]), name
    assert full["optimizer"]["adaptive_radius"] == split["optimizer"]["adaptive_radius"]
    evals = json.loads((tmp_path / "full" / "metrics.json").read_text())["evals"]
    # steps 2, 4, 6 and 8, 10, 12; a next-slope test is finished one step later: 3, 5 and 7, 9, 11
    assert [e["ratio_test"]["tests"] for e in evals] == ([2, 3] if options.get("tr_radius_test") == "next-slope"
                                                         else [3, 3])
    for e in evals:
        r = e["ratio_test"]
        assert r["scale"] > 0 and 0 <= r["skipped"] <= r["tests"]
        if r["tests"] > r["skipped"]:
            assert 0 <= r["shrink_fraction"] + r["grow_fraction"] <= 1 and 0 <= r["accept_fraction"] <= 1
    assert [e["ratio_test"] for e in evals] == \
        [e["ratio_test"] for e in json.loads((tmp_path / "split" / "metrics.json").read_text())["evals"]]
    panels = [kind for kind, _, _ in _panels([RunCurves.from_run(tmp_path / "full")])]
    assert "radius_scale" in panels and "ratio_test" in panels
    assert (tmp_path / "full" / "curves.png").stat().st_size > 0


def test_fixed_radius_records_no_ratio_test(tiny_scene, tmp_path) -> None:
    train(_config(tiny_scene, tmp_path / "fixed", optimizer="tr", curvature="none", iters=4, eval_at=[4]))
    evals = json.loads((tmp_path / "fixed" / "metrics.json").read_text())["evals"]
    assert "ratio_test" not in evals[-1] and "on_bound_fraction" in evals[-1]
    assert not any(kind in ("radius_scale", "ratio_test")
                   for kind, _, _ in _panels([RunCurves.from_run(tmp_path / "fixed")]))


def test_adaptive_radius_needs_the_tr_optimizer(tiny_scene, tmp_path) -> None:
    with pytest.raises(TrsplatError, match="--tr-radius adaptive needs --optimizer tr"):
        _config(tiny_scene, tmp_path / "x", optimizer="adam", tr_radius="adaptive").validate()


def test_the_extra_render_reproduces_the_training_loss(tiny_scene, tmp_path) -> None:
    """The ratio test's actual decrease compares the gradient render's loss with a forward render
    without autograd: at the same parameters both give the same number."""
    from trsplat.loss import training_loss
    from trsplat.render import render
    from trsplat.training.trainer import Trainer, prepare

    cfg = _config(tiny_scene, tmp_path / "loss", optimizer="tr", tr_radius="adaptive", grad_views=2)
    scene, gaussians = prepare(cfg)
    trainer = Trainer(cfg, scene, gaussians, hooks=[])
    views = [0, 3]
    total = 0.0
    for v in views:
        out = render(trainer.gaussians, scene.train[v].camera, sh_degree=1, background=trainer.background,
                     backend=trainer.backend)
        total += float(training_loss(out.image, scene.train[v].image, cfg.lambda_dssim).detach() / len(views))
    assert trainer._views_loss(1, views) == total


def test_options_of_the_rule_caps_opacity_and_damping() -> None:
    """``scale_max`` bounds κ both ways, the opacity factor is min(κ, cap), μ doubles when κ
    shrinks and halves when the model held (also inside the bound), within [LM_MIN, LM_MAX]."""
    c = AdaptiveRadius(scale_max=4.0, opacity_scale_max=1.0, damping="lm")
    assert (c.scale_min, c.opacity_scale(), c.damping_factor) == (0.25, 1.0, R.LM_START)
    c.update(1.0, 0.9, 1.0)
    assert (c.scale, c.opacity_scale(), c.damping_factor) == (2.0, 1.0, R.LM_START * R.LM_DECAY)
    c.update(1.0, 0.9, 0.0)  # held inside the bound: κ kept, μ still decays
    assert (c.scale, c.damping_factor) == (2.0, R.LM_START * R.LM_DECAY ** 2)
    c.update(1.0, 0.5, 1.0)  # in between: both kept
    assert (c.scale, c.damping_factor) == (2.0, R.LM_START * R.LM_DECAY ** 2)
    for _ in range(5):
        c.update(1.0, 0.9, 1.0)
    assert c.scale == 4.0 and c.opacity_scale() == 1.0
    for _ in range(5):
        c.update(1.0, 0.0, 1.0)
    assert c.scale == 0.25 and c.opacity_scale() == 0.25 and c.damping_factor == R.LM_START * R.LM_DECAY ** 2
    for _ in range(40):
        c.update(1.0, 0.0, 1.0)
    assert c.damping_factor == R.LM_MAX
    stats = c.window_statistics()
    assert stats["damping"] == R.LM_MAX and stats["damping_mean"] > 0
    plain = AdaptiveRadius()
    plain.update(1.0, 0.0, 1.0)
    assert plain.damping_factor == R.LM_START and "damping" not in plain.window_statistics()
    d = torch.tensor([-1.0, 0.0, 2.0, 6.0])
    assert torch.equal(AdaptiveRadius(damping="lm").lm_damping(d), torch.tensor([2.0, 2.0, 4.0, 8.0]))
    zero = torch.tensor([-1.0, 0.0])
    assert torch.equal(AdaptiveRadius(damping="lm").lm_damping(zero), zero)  # no positive curvature: the guard's
    floored = AdaptiveRadius(scale_max=16.0, scale_floor=1.0)
    for _ in range(3):
        floored.update(1.0, 0.0, 1.0)
    assert floored.scale == 1.0 and floored.scale_min == 1.0
    for bad in (dict(test_on="next"), dict(held_out_views=0), dict(scale_max=0.5), dict(opacity_scale_max=0.0),
                dict(scale_floor=0.0), dict(scale_floor=2.0),
                dict(damping="trust")):
        with pytest.raises(ValueError):
            AdaptiveRadius(**bad)
    with pytest.raises(ValueError, match="tied to the adaptive radius"):
        TrustRegionNewton(raw_params(3, 1), damping="lm")


def test_held_out_views_are_drawn_apart_from_the_step() -> None:
    c = AdaptiveRadius(test_on="held-out", held_out_views=3, seed=4)
    again = AdaptiveRadius(test_on="held-out", held_out_views=3, seed=4)
    for _ in range(20):
        views = c.draw_views(8, [2, 5])
        assert len(set(views)) == 3 and not set(views) & {2, 5} and all(0 <= v < 8 for v in views)
        assert again.draw_views(8, [2, 5]) == views
    assert c.draw_views(2, [0, 1]) in ([0, 1], [1, 0])  # nothing else left: any view


def test_held_out_model_predicts_with_the_gradient_ema() -> None:
    """With ``test_on="held-out"`` the predicted decrease is −(ĝ·s + ½ s·D⁺s) with ĝ the gradient
    EMA (θ₁ = 0.5, computed here by hand), not the step's gradient; ρ against that value."""
    params = raw_params(30, 11)
    problem = Separable(params, 12)
    opt = TrustRegionNewton(params, curvature="hutchinson", interval=1, theta1=0.5, theta2=0.0, tr_eps=1e-4,
                            radius="adaptive", radius_test_every=1, radius_test_on="held-out")
    g_hat = {k: torch.zeros_like(v) for k, v in params.items()}
    for _ in range(4):
        before = {k: v.detach().clone() for k, v in params.items()}
        grads = torch.autograd.grad(problem.loss(params), list(params.values()))
        for k, g in zip(params, grads):
            g_hat[k] = 0.5 * g_hat[k] + 0.5 * g
        loss_before = float(problem.loss(params))
        _step(opt, params, problem, problem.curvature)
        s = {k: params[k].detach().double() - before[k].double() for k in params}
        predicted = -sum(float((g_hat[k].double() * s[k]).sum()) + 0.5 * float((problem.weight[k].double()
                                                                               * s[k] ** 2).sum()) for k in params)
        actual = loss_before - float(problem.loss(params))
        assert opt.radius_control.last_rho == pytest.approx(actual / predicted, rel=1e-4)
        steps_gs = sum(float((g.double() * s[k]).sum()) for g, k in zip(grads, params))
        assert abs(steps_gs - sum(float((g_hat[k].double() * s[k]).sum()) for k in params)) > 1e-3 * abs(steps_gs)


def test_opacity_cap_and_damping_shape_the_step() -> None:
    """κ grown to 8 with the opacity cap 1: the opacity step is the clip at ε, every other
    parameter's at 8ε; with ``damping="lm"`` the proposed step is −g/(D⁺ + μ·mean D⁺), then
    clipped (checked against the trust region's own clip of the hand-made step)."""
    params = raw_params(25, 13)
    problem = Separable(params, 14)
    eps = 1e-4
    opt = TrustRegionNewton(params, curvature="hutchinson", interval=1, theta1=0.0, theta2=0.0, tr_eps=eps,
                            radius="adaptive", radius_test_every=1000, radius_opacity_scale_max=1.0, damping="lm")
    opt.radius_control.scale = 8.0
    opt.radius_control.damping_factor = 0.25
    before = {k: v.detach().clone() for k, v in params.items()}
    grads = dict(zip(params, torch.autograd.grad(problem.loss(params), list(params.values()))))
    _step(opt, params, problem, problem.curvature)
    differs = []
    for k in params:
        d = problem.weight[k]
        proposed = -grads[k] / (d + 0.25 * float(d.double().mean()))
        k_eps = eps if k == "opacity_logits" else 8 * eps
        expected = opt.trust_region.clip(before, {k: proposed}, k_eps)[0][k]
        assert torch.allclose(params[k].detach() - before[k], expected, rtol=1e-4, atol=1e-6), k
        undamped = opt.trust_region.clip(before, {k: -grads[k] / d}, k_eps)[0][k]
        differs.append(not torch.allclose(undamped, expected, rtol=1e-4, atol=1e-6))
    assert any(differs)  # the damping changed some clipped steps
    opacity_8 = opt.trust_region.clip(before, {"opacity_logits": -grads["opacity_logits"] * 1e6}, 8 * eps)[0]
    assert (opacity_8["opacity_logits"].abs() > (params["opacity_logits"].detach() - before["opacity_logits"]).abs()
            ).any()


def test_damping_needs_an_adaptive_radius_and_a_curvature(tiny_scene, tmp_path) -> None:
    with pytest.raises(TrsplatError, match="--tr-damping lm needs"):
        _config(tiny_scene, tmp_path / "x", optimizer="tr", curvature="none", tr_radius="adaptive",
                tr_damping="lm").validate()
    with pytest.raises(TrsplatError, match="--tr-damping lm needs"):
        _config(tiny_scene, tmp_path / "x", optimizer="tr", tr_damping="lm").validate()


def test_next_slope_test_reads_the_next_gradient_along_the_step() -> None:
    """``test_on="next-slope"``: after the test step t (s, d₀ = g·s) the rule runs at step t + 1
    with ρ = (1 + g'·s/d₀)/2, g' the gradient at the new parameters (computed here by hand on an
    exact quadratic); no StepLoss is needed. A too-large radius overshoots (ρ < ½): κ shrinks."""
    params = raw_params(30, 21)
    problem = Separable(params, 22)
    opt = TrustRegionNewton(params, curvature="none", theta1=0.0, tr_eps=1e-1, radius="adaptive",
                            radius_test_every=2, radius_test_on="next-slope")
    assert not opt.ratio_test_due()
    expected_scale = 1.0
    for t in range(1, 9):
        before = {k: v.detach().clone() for k, v in params.items()}
        grads = torch.autograd.grad(problem.loss(params), list(params.values()))
        problem.loss(params).backward()
        opt.step()
        if t % 2 == 0:
            s = {k: params[k].detach().double() - before[k].double() for k in params}
            d0 = sum(float((g.double() * s[k]).sum()) for g, k in zip(grads, params))
            g_next = torch.autograd.grad(problem.loss(params), list(params.values()))
            d1 = sum(float((g.double() * s[k]).sum()) for g, k in zip(g_next, params))
            rho = (1 + d1 / d0) / 2
        if t % 2 == 1 and t > 1:
            assert opt.radius_control.last_rho == pytest.approx(rho, rel=1e-4, abs=1e-7)
            expected_scale *= R.SHRINK if rho < R.SLOPE_THRESHOLD else R.GROW
            assert opt.radius_control.scale == expected_scale
        opt.zero_grad()
    assert expected_scale < 1.0  # ε = 0.1 overshoots this quadratic
