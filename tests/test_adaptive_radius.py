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


def _run(params, problem, steps, *, curvature, resume_at=None, radius="adaptive"):
    def make():
        opt = TrustRegionNewton(params, curvature=curvature, interval=3, seed=5, radius=radius, radius_test_every=2)
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


@pytest.mark.parametrize("curvature", ["hutchinson", "gnb", "none"])
def test_state_dict_round_trip_continues_identically(curvature: str) -> None:
    """Saving and loading mid-run (between two tests) continues bit-identically: parameters, κ and
    the window's statistics."""
    params = raw_params(60, 7)
    problem = LeastSquares(params, 8)
    resumed_params = clone(params)
    straight = _run(params, problem, 15, curvature=curvature)
    resumed = _run(resumed_params, problem, 15, curvature=curvature, resume_at=8)
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


@pytest.mark.parametrize("curvature", ["hutchinson", "none"])
def test_training_records_the_ratio_test_and_resumes_identically(tiny_scene, tmp_path, monkeypatch,
                                                                 curvature: str) -> None:
    """A trained run writes the ratio-test record at each eval (tests since the previous eval) and
    draws its panels; an interrupted run resumes to the same parameters and records."""
    extra = dict(optimizer="tr", curvature=curvature, curvature_interval=3, eps_start=1e-4, eps_end=1e-6,
                 tr_radius="adaptive", tr_radius_test_every=2)
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
    assert [e["ratio_test"]["tests"] for e in evals] == [3, 3]  # steps 2, 4, 6 and 8, 10, 12
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
