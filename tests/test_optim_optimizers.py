"""The three optimizers on plain named tensors (no Gaussians, no renderer): Newton steps and the
clip, convergence, Adam equivalence, the closure contract, state_dict round trips, state shapes."""

from __future__ import annotations

import io

import pytest
import torch

from trsplat.optim.adam import AdamTrustRegion, GaussianAdam
from trsplat.optim.curvature import CurvatureEstimator
from trsplat.optim.hellinger import PARAM_NAMES, TrustRegionConfig
from trsplat.optim.schedules import ExponentialDecay, exponential_decay
from trsplat.optim.tr import TrustRegionNewton
from trsplat.optim.trust_region import HellingerTrustRegion

LRS = {"means": 1e-2, "sh_dc": 2.5e-3, "sh_rest": 1e-3, "opacity_logits": 0.025, "log_scales": 5e-3, "quats": 1e-3}


def raw_params(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Raw Gaussian-shaped tensors (plausible ranges), as leaves that require grad."""
    g = torch.Generator().manual_seed(seed)
    params = {
        "means": torch.randn(n, 3, generator=g),
        "log_scales": torch.rand(n, 3, generator=g) * 2 - 3,
        "quats": torch.randn(n, 4, generator=g),
        "opacity_logits": torch.rand(n, generator=g) * 4 - 1,
        "sh_dc": torch.rand(n, 1, 3, generator=g) * 2 - 1,
        "sh_rest": torch.randn(n, 15, 3, generator=g) * 0.1,
    }
    return {k: v.requires_grad_(True) for k, v in params.items()}


def clone(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


class LeastSquares:
    """r = M_k (x_k − x*_k) per tensor, M_k a fixed well-conditioned matrix acting on each row;
    loss ½‖r‖².  Its Gauss–Newton diagonal is the column norms² of M_k on every row."""

    def __init__(self, params: dict[str, torch.Tensor], seed: int, offset: float = 0.05) -> None:
        g = torch.Generator().manual_seed(seed)
        self.target = {k: v.detach() + offset * torch.randn(v.shape, generator=g) for k, v in params.items()}
        self.mix = {}
        for k, v in params.items():
            m = v[0].numel()
            self.mix[k] = torch.eye(m) + 0.2 * torch.randn(m, m, generator=g) / m ** 0.5

    def residual_fn(self, params: dict[str, torch.Tensor], frame=None) -> torch.Tensor:
        return torch.cat([((v - self.target[k]).reshape(v.shape[0], -1) @ self.mix[k].T).reshape(-1)
                          for k, v in params.items()])

    def loss(self, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return 0.5 * (self.residual_fn(params) ** 2).sum()

    def backward(self, params: dict[str, torch.Tensor]) -> None:
        self.loss(params).backward()

    def curvature_closure(self, params: dict[str, torch.Tensor], kind: str = "hutchinson", probes: int = 1):
        estimator = CurvatureEstimator(kind, probes)
        return lambda gen: estimator.estimate({k: v.detach() for k, v in params.items()}, [None], self.residual_fn,
                                              gen)


def exact(diag: dict[str, torch.Tensor]):
    return lambda generator: {k: v.clone() for k, v in diag.items()}


def test_newton_step_clipped_to_the_radius() -> None:
    """θ₁ = θ₂ = 0 and the exact curvature of Σ ½ a (x − x*)²: the update is exactly the Newton
    step −g/a clipped to the trust region at the old parameters; some coordinates are clipped,
    others reach x*."""
    params = raw_params(200, 0)
    gen = torch.Generator().manual_seed(1)
    target = {k: v.detach() + 10.0 ** torch.randint(-6, 0, v.shape, generator=gen) * torch.randn(v.shape, generator=gen)
              for k, v in params.items()}
    curv = {k: torch.rand(v.shape, generator=gen) + 0.5 for k, v in params.items()}
    start = {k: v.detach().clone() for k, v in params.items()}
    opt = TrustRegionNewton(params, tr_eps=1e-4, theta1=0.0, theta2=0.0, interval=1)
    sum(0.5 * (curv[k] * (v - target[k]) ** 2).sum() for k, v in params.items()).backward()
    newton = {k: -(v.grad / curv[k]) for k, v in params.items()}
    want, on_bound = HellingerTrustRegion().clip(start, newton, 1e-4)
    opt.step(exact(curv))
    for k, v in params.items():
        assert torch.equal(v.detach(), start[k] + want[k]), k
        assert on_bound[k].any() and (~on_bound[k]).any(), k
        reached = ~on_bound[k]
        torch.testing.assert_close(v.detach()[reached], target[k][reached], rtol=1e-5, atol=1e-6, msg=k)
    stats = opt.trust_region.stats
    assert stats.on_bound == {k: int(m.sum()) for k, m in on_bound.items()}
    assert list(stats.on_bound) == list(PARAM_NAMES)


@pytest.mark.parametrize("kind", ["hutchinson", "gnb"])
def test_trust_region_newton_fits_least_squares(kind: str) -> None:
    """The paper's settings (θ₁ 0.9, θ₂ 0.999, refresh every 10 steps, one probe) with bias
    correction and a large ε: the loss of a coupled linear least-squares problem falls 10⁴×."""
    params = raw_params(50, 2)
    problem = LeastSquares(params, 3)
    opt = TrustRegionNewton(params, tr_eps=1e-2, bias_correction=True)
    initial = float(problem.loss(params).detach())
    for _ in range(150):
        problem.backward(params)
        opt.step(problem.curvature_closure(params, kind))
    assert float(problem.loss(params).detach()) < 1e-4 * initial


def test_adam_and_adam_tr_fit_least_squares() -> None:
    """GaussianAdam converges; ADAM-TR with an ε that clips a good share of the steps converges
    more slowly but still cuts the loss 100×."""
    for make, factor in ((lambda p: GaussianAdam(p, LRS), 1e-3),
                         (lambda p: AdamTrustRegion(p, LRS, tr_eps=1e-5), 1e-2)):
        params = raw_params(50, 2)
        problem = LeastSquares(params, 3)
        opt = make(params)
        initial = float(problem.loss(params).detach())
        for _ in range(300):
            problem.backward(params)
            opt.step()
            opt.zero_grad()
        assert float(problem.loss(params).detach()) < factor * initial, type(opt).__name__
        if opt.trust_region is not None:
            assert opt.trust_region.stats.fractions()["means"] > 0.1


@pytest.mark.parametrize("fused", [False, True])
def test_gaussian_adam_is_torch_adam(fused: bool) -> None:
    """GaussianAdam with the position-lr schedule equals torch.optim.Adam (single-tensor or fused)
    with the same groups and the lr set by hand, bit for bit."""
    params = raw_params(40, 4)
    problem = LeastSquares(params, 5)
    ref_params = clone(params)
    opt = GaussianAdam(params, LRS, eps=1e-15, fused=fused)
    decay = ExponentialDecay(opt, key="lr", group="means", start=1e-2, end=1e-4, max_steps=20)
    ref = torch.optim.Adam([{"params": [ref_params[k]], "lr": lr} for k, lr in LRS.items()], lr=0.0, eps=1e-15,
                           fused=fused or None)
    for t in range(1, 26):
        problem.backward(params)
        problem.backward(ref_params)
        decay.step(t)
        ref.param_groups[0]["lr"] = exponential_decay(t, 1e-2, 1e-4, 20)
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
    for k in params:
        assert torch.equal(params[k], ref_params[k]), k
    assert [g["name"] for g in opt.param_groups] == list(LRS)


def test_curvature_closure_only_when_due() -> None:
    """The closure runs at steps t ≡ 1 (mod l) of the optimizer's own count, never for
    curvature "none", and a due refresh without a closure is an error."""
    params = raw_params(10, 6)
    calls = []

    def closure(generator):
        calls.append(opt.state[params["means"]]["step"])
        return {k: torch.ones_like(v) for k, v in params.items()}

    opt = TrustRegionNewton(params, interval=10)
    for _ in range(25):
        sum((v ** 2).sum() for v in params.values()).backward()
        opt.step(closure)
    assert calls == [1, 11, 21]
    assert opt.state[params["means"]]["curvature_updates"] == 3

    none = TrustRegionNewton(clone(params), curvature="none", interval=1)
    for p in none.param_groups:
        p["params"][0].grad = torch.ones_like(p["params"][0])
    none.step()  # no closure needed
    assert none.state[none.param_groups[0]["params"][0]]["curvature_updates"] == 0
    with pytest.raises(ValueError, match="curvature refresh is due"):
        TrustRegionNewton(clone(params)).step()


def _run(make, params, problem, steps, *, closure_kind=None, resume_at=None):
    """``steps`` steps with the schedulers, optionally through a state_dict round trip (torch.save)
    into a freshly built optimizer before step ``resume_at``."""
    opt, schedulers = make(params)
    for t in range(1, steps + 1):
        if t == resume_at:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            opt, schedulers = make(params)
            opt.load_state_dict(torch.load(buf, weights_only=True))
        problem.backward(params)
        for s in schedulers:
            s.step(t)
        if closure_kind is None:
            opt.step()
        else:
            opt.step(problem.curvature_closure(params, closure_kind))
        opt.zero_grad()
    return opt


def _tr(params):
    opt = TrustRegionNewton(params, interval=3, seed=5, step_norm="median-radius", bias_correction=True)
    return opt, [ExponentialDecay(opt, key="tr_eps", start=1e-3, end=1e-5, max_steps=20)]


def _tr_none(params):
    """tr without a curvature estimator (D̂ = 0: no curvature tensor in the state)."""
    opt = TrustRegionNewton(params, curvature="none", interval=3, seed=5, bias_correction=True)
    return opt, [ExponentialDecay(opt, key="tr_eps", start=1e-3, end=1e-5, max_steps=20)]


def _tr_adam(params):
    """tr with Adam's normalised step inside the bound (``step_rule="adam"``)."""
    opt = TrustRegionNewton(params, curvature="none", step_rule="adam", seed=5)
    return opt, [ExponentialDecay(opt, key="tr_eps", start=1e-3, end=1e-5, max_steps=20)]


def _adam_tr(params):
    opt = AdamTrustRegion(params, LRS, trust_region=HellingerTrustRegion(TrustRegionConfig.kernel_exact()))
    return opt, [ExponentialDecay(opt, key="lr", group="means", start=1e-2, end=1e-4, max_steps=20),
                 ExponentialDecay(opt, key="tr_eps", start=1e-3, end=1e-5, max_steps=20)]


def _adam(params):
    opt = GaussianAdam(params, LRS)
    return opt, [ExponentialDecay(opt, key="lr", group="means", start=1e-2, end=1e-4, max_steps=20)]


@pytest.mark.parametrize("make,closure_kind", [(_tr, "hutchinson"), (_tr_none, None), (_tr_adam, None),
                                                (_adam_tr, None), (_adam, None)],
                         ids=["tr", "tr-none", "tr-adam-step", "adam-tr", "adam"])
def test_state_dict_round_trip_continues_identically(make, closure_kind) -> None:
    """Saving and loading the state_dict mid-run (before a curvature refresh that draws from the
    generator) continues bit-identically, bound statistics included."""
    params = raw_params(60, 7)
    problem = LeastSquares(params, 8)
    resumed_params = clone(params)
    straight = _run(make, params, problem, 15, closure_kind=closure_kind)
    resumed = _run(make, resumed_params, problem, 15, closure_kind=closure_kind, resume_at=7)
    for k in params:
        assert torch.equal(params[k], resumed_params[k]), k
    if straight.trust_region is not None:
        assert straight.trust_region.stats.state_dict() == resumed.trust_region.stats.state_dict()
        assert sum(straight.trust_region.stats.total.values()) > 0


@pytest.mark.parametrize("make,closure_kind", [(_tr, "gnb"), (_tr_none, None), (_tr_adam, None), (_adam_tr, None),
                                                (_adam, None)], ids=["tr", "tr-none", "tr-adam-step", "adam-tr", "adam"])
def test_state_follows_the_parameters(make, closure_kind) -> None:
    """Every per-parameter state tensor that is not a scalar has the parameter's shape, so a
    densification helper can index it like the parameter: pruning half the rows of every
    parameter and of those state tensors leaves an optimizer that keeps stepping."""
    params = raw_params(30, 9)
    problem = LeastSquares(params, 10)
    opt = _run(make, params, problem, 4, closure_kind=closure_kind)
    per_param = {"TrustRegionNewton": {_tr_none: {"grad_ema"}, _tr_adam: {"grad_ema", "exp_avg_sq"}}.get(
                     make, {"grad_ema", "curv_ema"}),
                 "AdamTrustRegion": {"exp_avg", "exp_avg_sq"}, "GaussianAdam": {"exp_avg", "exp_avg_sq"}}[type(opt).__name__]
    keep = torch.arange(30) % 2 == 0
    for group in opt.param_groups:
        (p,) = group["params"]
        state = opt.state.pop(p)
        shaped = {k for k, v in state.items() if torch.is_tensor(v) and v.dim() > 0}
        assert shaped == per_param, group["name"]
        assert all(state[k].shape == p.shape for k in shaped), group["name"]
        new = p.detach()[keep].clone().requires_grad_(True)
        opt.state[new] = {k: v[keep].clone() if k in shaped else v for k, v in state.items()}
        group["params"] = [new]
        params[group["name"]] = new
    assert {k for k in opt.state if not torch.is_tensor(k)} <= {"generator"}
    small = LeastSquares(params, 11)
    before = {k: v.detach().clone() for k, v in params.items()}
    small.backward(params)
    if closure_kind is None:
        opt.step()
    else:
        opt.step(small.curvature_closure(params, closure_kind))
    assert all(not torch.equal(before[k], v) for k, v in params.items())


def test_clip_backends_agree_in_the_optimizer() -> None:
    """The clip backend is a parameter of the trust region: torch and cpu give the same run."""
    runs = []
    for backend in ("torch", "cpu"):
        params = raw_params(80, 12)
        problem = LeastSquares(params, 13)
        opt = AdamTrustRegion(params, LRS, trust_region=HellingerTrustRegion(clip_backend=backend), tr_eps=1e-3)
        for _ in range(5):
            problem.backward(params)
            opt.step()
            opt.zero_grad()
        runs.append((params, opt.trust_region.stats.state_dict()))
    (a, stats_a), (b, stats_b) = runs
    assert all(torch.equal(a[k], b[k]) for k in a) and stats_a == stats_b
    with pytest.raises(ValueError, match="unknown clip backend"):
        HellingerTrustRegion(clip_backend="numba")


def test_adam_step_rule_is_the_bound_step_scaled_by_adams_normalised_step() -> None:
    """``step_rule="adam"``: each coordinate moves min(1, |m̂|/(√v̂ + eps)) times the full step of
    the Newton rule without curvature (which always reaches the bound), m̂ and v̂ computed here from
    the gradients by Adam's formulas; about half the coordinates get a shorter step."""
    params = {k: v.detach().double() for k, v in raw_params(40, 21).items()}  # (steps measured as differences)
    newton_params, adam_params = clone(params), clone(params)
    newton = TrustRegionNewton(newton_params, curvature="none", tr_eps=1e-4)
    adam = TrustRegionNewton(adam_params, curvature="none", step_rule="adam", tr_eps=1e-4)
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v2 = {k: torch.zeros_like(v) for k, v in params.items()}
    g = torch.Generator().manual_seed(23)
    for t in range(1, 31):
        # the same noisy gradients for both (so their EMAs agree), applied at the same point
        grads = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) + 0.3 for k, v in params.items()}
        for k in params:
            m[k] = 0.9 * m[k] + 0.1 * grads[k]
            v2[k] = 0.999 * v2[k] + 0.001 * grads[k] ** 2
        start = {k: v.detach().clone() for k, v in adam_params.items()}
        with torch.no_grad():
            for k in params:
                newton_params[k].copy_(start[k])
        for opt, ps in ((newton, newton_params), (adam, adam_params)):
            for k, p in ps.items():
                p.grad = grads[k].clone()
            opt.step()
        shorter = 0
        for k in params:
            u = (m[k] / (1 - 0.9 ** t)) / ((v2[k] / (1 - 0.999 ** t)).sqrt() + 1e-15)
            full = newton_params[k].detach() - start[k]
            want = full * u.abs().clamp(max=1.0)
            torch.testing.assert_close(adam_params[k].detach() - start[k], want, rtol=1e-9, atol=1e-12, msg=k)
            shorter += int((u.abs() < 0.99).sum())
    assert shorter > 0.5 * sum(v.numel() for v in params.values())  # (at the last step)


def test_adam_step_rule_takes_no_curvature() -> None:
    with pytest.raises(ValueError, match="curvature='none'"):
        TrustRegionNewton(raw_params(4, 1), curvature="hutchinson", step_rule="adam")
