"""3DGS-MCMC: the relocation arithmetic (Eq. 9 of Kheradmand et al. 2024), relocation and growth,
the position noise, the regularisers, the optimiser state of moved Gaussians, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.helpers import front_camera
from tests.test_strategy_adc import (_metrics, _optimizer, _per_gaussian_state, _population, _resume, _train,
                                     densify_config, optimizer_options)
from trsplat.config import OptimizerConfig, StrategyConfig
from trsplat.gaussians import Gaussians
from trsplat.optim.build import build_optimizer
from trsplat.optim.tr import TrustRegionNewton
from trsplat.render import render
from trsplat.strategy import StepInfo, build_strategy
from trsplat.strategy.adc import rotation_matrices
from trsplat.strategy.mcmc import MCMC, MCMCParams, relocation
from trsplat.strategy.ops import inherits
from trsplat.synthetic import make_synthetic_scene
from trsplat.training import RunDir


def _mcmc(**overrides) -> MCMC:
    return MCMC(MCMCParams(**overrides), position_lr=lambda it: 1e-3, seed=0)


# -- Eq. 9 ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 20])
@pytest.mark.parametrize("o", [0.05, 0.3, 0.7, 0.95, 0.999])
def test_relocation_keeps_the_peak_and_the_1d_integral(n, o) -> None:
    """n stacked copies composite to 1 − (1 − o'g')^n: equal to o at the centre, and with the
    scale correction ∫ over a line equals o·s·√(2π), what the paper's derivation preserves."""
    s = 0.37
    o_new, s_new = relocation(torch.tensor([o], dtype=torch.float64), torch.full((1, 3), s, dtype=torch.float64),
                              torch.tensor([n]))
    o_new, s_new = float(o_new), float(s_new[0, 0])
    if 1 - (1 - o) ** (1 / n) >= 0.005:
        assert 1 - (1 - o_new) ** n == pytest.approx(o, rel=1e-12)
    else:  # o' clamped at min_opacity: a higher peak, narrower copies, the same integral
        assert o_new == 0.005 and 1 - (1 - o_new) ** n > o
    x = torch.linspace(-14 * s_new, 14 * s_new, 400_001, dtype=torch.float64)
    profile = 1 - (1 - o_new * torch.exp(-0.5 * (x / s_new) ** 2)) ** n
    assert float(torch.trapezoid(profile, x)) == pytest.approx(o * s * math.sqrt(2 * math.pi), rel=1e-7)
    if n == 1:
        assert (o_new, s_new) == pytest.approx((o, s), rel=1e-12)


def test_relocation_clamps_the_new_opacity() -> None:
    o_new, _ = relocation(torch.tensor([0.01, 0.9999999]), torch.ones(2, 3), torch.tensor([10, 1]), min_opacity=0.005)
    assert float(o_new[0]) == pytest.approx(0.005) and float(o_new[1]) <= 1 - torch.finfo(torch.float32).eps


def _alpha_mass(opacity: float, scale: float, copies: int) -> tuple[float, float]:
    """(centre alpha, Σ alpha) of ``copies`` stacked isotropic Gaussians, rendered by the reference."""
    cam = front_camera(64, 64, distance=3.0, focal=64.0, cx=32.5, cy=32.5)  # the centre on pixel (32, 32)
    one = torch.ones(copies, 1)
    g = Gaussians(means=torch.zeros(copies, 3), log_scales=math.log(scale) * torch.ones(copies, 3),
                  quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]) * one, opacity_logits=torch.full((copies,), math.log(opacity / (1 - opacity))),
                  sh_dc=torch.zeros(copies, 1, 3), sh_rest=torch.zeros(copies, 15, 3))
    alpha = render(g, cam, sh_degree=0, backend="reference").alpha
    return float(alpha[32, 32]), float(alpha.sum())


@pytest.mark.parametrize("o, n", [(0.6, 3), (0.9, 5)])
def test_a_relocated_group_renders_like_the_original(o, n) -> None:
    """Within the paper's approximation: the centre opacity is the original's; the alpha mass
    (a 2D integral, where Eq. 9 matches 1D ones) follows the 2D prediction of the corrected
    scales, and is closer to the original than without the scale correction."""
    s = 0.25  # 64 px focal at 3 units: a 5.3 px standard deviation
    o_new, s_new = relocation(torch.tensor([o]), torch.full((1, 3), s), torch.tensor([n]))
    o_new, s_new = float(o_new), float(s_new[0, 0])
    centre, mass = _alpha_mass(o, s, 1)
    centre_n, mass_n = _alpha_mass(o_new, s_new, n)
    _, mass_uncorrected = _alpha_mass(o_new, s, n)
    assert centre_n == pytest.approx(centre, abs=1e-5) and centre == pytest.approx(o, abs=1e-5)
    # ∫∫ 1 − (1 − o'g)^n over the plane = 2π s'² Σ_k C(n,k) (−1)^(k−1) o'^k / k (vs 2π s² o)
    series = sum(math.comb(n, k) * (-1) ** (k - 1) * o_new ** k / k for k in range(1, n + 1))
    predicted = (s_new / s) ** 2 * series / o
    assert mass_n / mass == pytest.approx(predicted, rel=0.03)
    assert abs(mass_n - mass) < abs(mass_uncorrected - mass)


# -- relocation and growth --------------------------------------------------------------------------
def _group_check(before: dict, after: dict, sources: torch.Tensor, rows: torch.Tensor) -> None:
    """Each of ``rows`` is a copy of ``sources`` (same row index order) and every source group
    shares the relocated opacity and scale of Eq. 9."""
    n = torch.bincount(sources, minlength=len(before["means"]))
    o_src = torch.sigmoid(before["opacity_logits"][sources])
    o_new, s_new = relocation(o_src, torch.exp(before["log_scales"][sources]), n[sources] + 1)
    for name in ("means", "quats", "sh_dc", "sh_rest"):
        assert torch.equal(after[name][rows], before[name][sources]), name
        assert torch.equal(after[name][sources], before[name][sources]), name
    for r in (rows, sources):
        assert torch.allclose(torch.sigmoid(after["opacity_logits"][r]), o_new, rtol=1e-5)
        assert torch.allclose(torch.exp(after["log_scales"][r]), s_new, rtol=1e-5)


def _source_of(before: dict, after: dict, rows: torch.Tensor) -> torch.Tensor:
    """The original row whose position each of ``rows`` now has (positions are distinct)."""
    d = (after["means"][rows][:, None, :] - before["means"][None, :, :]).abs().sum(-1)
    assert bool((d.min(dim=1).values == 0).all())
    return d.argmin(dim=1)


@pytest.mark.parametrize("optimizer_name", ["adam", "tr"])
def test_relocate_moves_dead_gaussians_onto_live_ones(optimizer_name) -> None:
    g = _population(40, 4, 1.0)
    g.opacity_logits.data[:] = torch.linspace(-1.0, 3.0, 40)
    dead = torch.tensor([0, 7, 13, 21, 22, 39])
    g.opacity_logits.data[dead] = -8.0  # opacity 3e-4 <= 0.005
    optimizer = _optimizer(g, optimizer_name)
    state_before = {k: {s: v.clone() for s, v in st.items()} for k, st in _per_gaussian_state(optimizer).items()}
    before = {k: v.detach().clone() for k, v in g.params().items()}
    strategy = _mcmc()
    assert strategy.relocate(g, optimizer) == len(dead)
    after = {k: v.detach() for k, v in g.params().items()}
    sources = _source_of(before, after, dead)
    assert not bool(torch.isin(sources, dead).any())
    _group_check(before, after, sources, dead)
    moved = torch.cat([dead, sources])
    for name, st in _per_gaussian_state(optimizer).items():
        for key, v in st.items():
            assert v.shape == after[name].shape
            if name in ("opacity_logits", "log_scales"):
                assert not v[moved].any(), (name, key)     # changed values start afresh
            else:
                assert not v[dead].any(), (name, key)
                assert torch.equal(v[sources], state_before[name][key][sources]), (name, key)


def test_sources_are_drawn_in_proportion_to_opacity() -> None:
    strategy = _mcmc()
    draws = strategy._sample(torch.tensor([0.1, 0.3, 0.0, 0.6]), 40_000)
    freq = torch.bincount(draws, minlength=4).double() / len(draws)
    assert torch.allclose(freq, torch.tensor([0.1, 0.3, 0.0, 0.6], dtype=torch.float64), atol=0.01)
    assert int(freq[2] * len(draws)) == 0


@pytest.mark.parametrize("n, cap, added", [(100, 1_000_000, 5), (100, 103, 3), (100, 100, 0), (19, 1000, 0)])
def test_grow_adds_five_percent_up_to_the_cap(n, cap, added) -> None:
    g = _population(n, 5, 1.0)
    g.opacity_logits.data[:] = torch.linspace(-2.0, 2.0, n)
    optimizer = _optimizer(g, "adam-tr")
    before = {k: v.detach().clone() for k, v in g.params().items()}
    assert _mcmc(cap_max=cap, state_policy="inherit").grow(g, optimizer) == added
    assert len(g) == n + added
    after = {k: v.detach() for k, v in g.params().items()}
    new = torch.arange(n, n + added)
    _group_check(before, after, _source_of(before, after, new), new)
    for name, st in _per_gaussian_state(optimizer).items():
        for v in st.values():
            assert v.shape == after[name].shape


@pytest.mark.parametrize("logit", [-200.0, float("nan")])
def test_nothing_to_copy_when_no_opacity_is_positive(logit) -> None:
    """A collapsed (every opacity 0) or non-finite population neither grows nor relocates, so a
    diverging run reaches the trainer's divergence check instead of failing in the sampler."""
    g = _population(100, 5, 1.0)
    g.opacity_logits.data[:] = logit
    optimizer = _optimizer(g, "adam")
    mcmc = _mcmc()
    assert mcmc.relocate(g, optimizer) == 0 and mcmc.grow(g, optimizer) == 0 and len(g) == 100


# -- noise and regularisers --------------------------------------------------------------------------
def test_noise_is_covariance_shaped_and_gated_by_opacity() -> None:
    n = 20_000
    g = _population(n, 6, 1.0)
    g.log_scales.data[:] = torch.log(torch.tensor([0.3, 0.1, 0.05]))
    g.quats.data[:] = torch.tensor([0.9, 0.3, -0.2, 0.25])
    g.opacity_logits.data[:] = -30.0  # gate σ(−100 (o − 0.005)) ≈ σ(0.5) for o ≈ 0
    g.opacity_logits.data[: n // 2] = 0.0  # opacity 0.5: gate σ(−49.5) ≈ 3e-22
    grad = torch.randn(n, 3)
    g.means.grad = grad.clone()
    means, tensor = g.means.detach().clone(), g.means
    lr = 1e-3
    _mcmc(noise_lr=2.0).add_noise(g, lr)
    assert g.means is tensor and torch.equal(g.means.grad, grad)  # in place: gradient and state kept
    d = g.means.detach() - means
    assert d[: n // 2].abs().max() < 1e-12
    rot = rotation_matrices(g.quats.detach()[:1])[0]
    cov = rot @ torch.diag(torch.tensor([0.3, 0.1, 0.05]) ** 2) @ rot.T
    gate = torch.sigmoid(-100.0 * (torch.sigmoid(torch.tensor(-30.0)) - 0.005))
    expected = (lr * 2.0 * gate) ** 2 * cov @ cov
    measured = torch.cov(d[n // 2:].double().T).float()
    assert (measured - expected).abs().max() < 0.05 * expected.abs().max()


@pytest.mark.parametrize("optimizer_name", ["adam", "tr"])
def test_noise_in_radius_clips_each_coordinate_to_the_position_radius(optimizer_name) -> None:
    """``noise_in_radius``: with a trust-region optimizer the noise is the plain noise (same
    draws) clipped coordinate-wise to the Hellinger position radius at the optimizer's ε, so
    some coordinates are cut and the rest pass unchanged; Adam has no radius and gets the plain
    noise."""
    g = _population(400, 8, 1.0)
    g.opacity_logits.data[:] = -6.0  # faint: gate ≈ 0.6, large noise
    optimizer = _optimizer(g, optimizer_name)
    means = g.means.detach().clone()
    plain = g.clone()
    _mcmc(noise_lr=2e3).add_noise(plain, 1e-3)
    noise = plain.means.detach() - means
    _mcmc(noise_lr=2e3, noise_in_radius=True).add_noise(g, 1e-3, optimizer)
    d = g.means.detach() - means
    if optimizer_name == "adam":
        assert torch.equal(d, noise)
        return
    params = {k: v.detach() for k, v in g.params().items()}
    params["means"] = means
    radius = optimizer.trust_region.clip(params, {"means": torch.sign(noise) * 1e30},
                                         optimizer.param_groups[0]["tr_eps"])[0]["means"].abs()
    cut = noise.abs() > radius
    assert 0 < int(cut.sum()) < cut.numel()
    atol = 3e-7  # d is read back from float32 positions of size ~1 (2-3 ulp)
    torch.testing.assert_close(d[cut].abs(), radius[cut], rtol=1e-5, atol=atol)
    torch.testing.assert_close(d[~cut], noise[~cut], rtol=1e-5, atol=atol)


def test_regulariser_gradients_are_those_of_the_l1_terms() -> None:
    g = _population(30, 7, 1.0)
    g.opacity_logits.data[:] = torch.linspace(-3.0, 3.0, 30)
    g.means.grad = torch.ones(30, 3)
    g.opacity_logits.grad = torch.full((30,), 0.5)
    _mcmc(opacity_reg=0.02, scale_reg=0.03).add_regularizer_grads(g)
    ref = g.detach().requires_grad_(True)
    loss = 0.02 * torch.sigmoid(ref.opacity_logits).abs().mean() + 0.03 * torch.exp(ref.log_scales).abs().mean()
    loss.backward()
    assert torch.allclose(g.opacity_logits.grad, 0.5 + ref.opacity_logits.grad, rtol=1e-6)
    assert torch.allclose(g.log_scales.grad, ref.log_scales.grad, rtol=1e-6)  # created where missing
    assert torch.equal(g.means.grad, torch.ones(30, 3))


@pytest.mark.parametrize("iteration", [99, 100])
def test_opacity_regulariser_until_stop_ends_at_the_last_relocation(iteration) -> None:
    """``opacity_reg_until_stop``: the opacity term is added before ``stop`` and not from it on;
    the scale term always."""
    grads = {}
    for until_stop in (False, True):
        g = _population(30, 7, 1.0)
        g.opacity_logits.grad = torch.zeros(30)
        _mcmc(stop=100, opacity_reg_until_stop=until_stop).add_regularizer_grads(g, iteration)
        grads[until_stop] = (g.opacity_logits.grad, g.log_scales.grad)
    assert torch.equal(grads[True][1], grads[False][1]) and bool((grads[False][0] > 0).all())
    assert torch.equal(grads[True][0], grads[False][0] if iteration < 100 else torch.zeros(30))


# -- optimiser state of relocated Gaussians ----------------------------------------------------------
def _grads(g: Gaussians, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 1e-3 for k, v in g.params().items()}


def _step(optimizer, g: Gaussians, grads: dict[str, torch.Tensor], curvature: dict[str, torch.Tensor]) -> None:
    for k, p in g.params().items():
        p.grad = grads[k].clone()
    if isinstance(optimizer, TrustRegionNewton):
        optimizer.step(lambda _: {k: v.clone() for k, v in curvature.items()})
    else:
        optimizer.step()


@pytest.mark.parametrize("optimizer_name", ["adam", "adam-tr", "tr"])
@pytest.mark.parametrize("policy", ["zero", "inherit-curvature"])
def test_relocate_then_step_equals_a_fresh_optimizer_on_the_moved_entries(optimizer_name, policy) -> None:
    """After a relocation, the moved entries step exactly as an optimizer that never saw them:
    zero state (``zero``) or only the source's curvature estimate (``inherit-curvature``). The
    trust-region radii come from the new parameters. Adam keeps one bias-correction counter per
    tensor, so its fresh counterpart has the same counter and zero moments."""
    g = _population(30, 8, 1.0)
    g.opacity_logits.data[:] = torch.linspace(-1.0, 3.0, 30)
    ocfg = OptimizerConfig(optimizer=optimizer_name, curvature_interval=1, eps_start=1e-3)
    optimizer, _ = build_optimizer(ocfg, g.params(), extent=1.0, iters=100, seed=0)
    for it in range(3):
        _step(optimizer, g, _grads(g, it), _grads(g, 10 + it))
    dead = torch.tensor([2, 5, 11, 17])
    g.opacity_logits.data[dead] = -9.0  # dead now, with the state of a live history
    old_state = {k: {s: v.clone() for s, v in st.items()} for k, st in _per_gaussian_state(optimizer).items()}
    before = {k: v.detach().clone() for k, v in g.params().items()}
    _mcmc(state_policy=policy).relocate(g, optimizer)
    sources = _source_of(before, {k: v.detach() for k, v in g.params().items()}, dead)
    fresh_g = g.clone().requires_grad_(True)
    fresh, _ = build_optimizer(ocfg, fresh_g.params(), extent=1.0, iters=100, seed=0)
    if optimizer_name != "tr" or policy != "zero":  # a fresh optimizer at the same counters
        for group, fresh_group in zip(optimizer.param_groups, fresh.param_groups):
            name = group["name"]
            p, q = group["params"][0], fresh_group["params"][0]
            fresh.state[q] = {}
            for key, v in optimizer.state[p].items():
                if isinstance(v, torch.Tensor) and v.dim() > 0:
                    v = torch.zeros_like(v)
                    if inherits(policy, key):
                        v[dead] = old_state[name][key][sources]
                        v[sources] = old_state[name][key][sources]
                fresh.state[q][key] = v.clone() if isinstance(v, torch.Tensor) else v
    grads, curvature = _grads(g, 99), _grads(g, 98)
    _step(optimizer, g, grads, {k: v.abs() for k, v in curvature.items()})
    _step(fresh, fresh_g, grads, {k: v.abs() for k, v in curvature.items()})
    for name in g.params():
        rows = torch.cat([dead, sources]) if name in ("opacity_logits", "log_scales") else dead
        assert torch.equal(getattr(g, name).detach()[rows], getattr(fresh_g, name).detach()[rows]), name


# -- schedule and resume ------------------------------------------------------------------------------
def test_mcmc_schedule_of_a_7000_iteration_run() -> None:
    strategy = build_strategy(StrategyConfig(densify="mcmc", cap_max=5000), OptimizerConfig(), iters=7000,
                              extent=2.0)
    p = strategy.params
    assert (p.start, p.stop, p.every, p.cap_max) == (117, 5833, 23, 5000)
    assert strategy.position_lr(0) == pytest.approx(1.6e-4 * 2.0)
    assert strategy.position_lr(30_000) == pytest.approx(1.6e-6 * 2.0)


@pytest.fixture(scope="module")
def tiny_scene(tmp_path_factory) -> Path:
    return make_synthetic_scene(tmp_path_factory.mktemp("scene") / "toy", size=32, n_train=6, n_test=2)


@pytest.mark.parametrize("optimizer", ["adam", "tr", "tr-adam-opacity"])
def test_mcmc_resume_is_bit_identical(tiny_scene, tmp_path, optimizer) -> None:
    extra = dict(densify="mcmc", cap_max=320, **optimizer_options(optimizer))
    full, run = _train(densify_config(tiny_scene, tmp_path / "full", **extra))
    run()
    history = full.strategy.history
    assert [r["iteration"] for r in history] == [3, 6, 9] and len(full.gaussians) == 320
    assert _metrics(tmp_path / "full")["densify"] == history
    _, run = _train(densify_config(tiny_scene, tmp_path / "split", **extra), interrupt_at=7)
    with pytest.raises(Exception, match="interrupted at iteration 7"):
        run()
    resumed, run = _resume(tmp_path / "split")
    run()
    a = torch.load(tmp_path / "full" / RunDir.CHECKPOINT, weights_only=False)
    b = torch.load(tmp_path / "split" / RunDir.CHECKPOINT, weights_only=False)
    for name, tensor in a["params"].items():
        assert torch.equal(tensor, b["params"][name]), name
    assert resumed.strategy.history == history


def test_step_records_each_refinement(tmp_path) -> None:
    g = _population(50, 9, 1.0)
    g.opacity_logits.data[:3] = -9.0
    optimizer = _optimizer(g, "adam")
    strategy = _mcmc(start=0, every=10, cap_max=51)
    info = StepInfo(10, [], renders=[])
    strategy.step_post_backward(g, optimizer, info)
    assert info.extras["densify"] == {"iteration": 10, "relocated": 3, "added": 1, "after": 51}
