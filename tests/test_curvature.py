"""Gauss–Newton products and diagonal estimators against the dense Jacobian of a tiny scene."""

from __future__ import annotations

import weakref

import torch
from torch.autograd import forward_ad

from trsplat.gaussians import Gaussians
from trsplat.loss import residuals
from trsplat.optim.curvature import gauss_newton_bartlett, gauss_newton_product, hutchinson, rademacher_like
from trsplat.render import render
from tests.helpers import front_camera, random_gaussians


class _Frame:
    def __init__(self, camera, image):
        self.camera, self.image = camera, image


def _tiny_problem(form: str = "sqrt"):
    """4 Gaussians, a 10x8 image, float64: parameters, a view, the residual function and its dense Jacobian."""
    g = random_gaussians(4, 2, spread=0.4, scale=(0.1, 0.3)).map(lambda t: t.double())
    cam = front_camera(10, 8, focal=9.0)
    target = random_gaussians(4, 9, spread=0.4, scale=(0.1, 0.3)).map(lambda t: t.double())
    with torch.no_grad():
        gt = render(target, cam, sh_degree=1).image
    frame = _Frame(cam, gt)

    def residual_fn(p: dict[str, torch.Tensor], frame: _Frame) -> torch.Tensor:
        out = render(Gaussians.from_params(p), frame.camera, sh_degree=1,
                     background=torch.ones(3, dtype=torch.float64), backend="reference")
        return residuals(out.image, frame.image, form=form, lambda_dssim=0.2, delta=1e-6)

    params = g.params()
    names = list(params)
    sizes = [params[k].numel() for k in names]

    def flat_residual(x: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(x, sizes)
        p = {k: c.reshape(params[k].shape) for k, c in zip(names, chunks)}
        return residual_fn(p, frame)

    x0 = torch.cat([params[k].reshape(-1) for k in names])
    jac = torch.autograd.functional.jacobian(flat_residual, x0)   # (R, P)
    return params, frame, residual_fn, jac, names, sizes


def _flatten(d: dict[str, torch.Tensor], names) -> torch.Tensor:
    return torch.cat([d[k].reshape(-1) for k in names])


def test_gauss_newton_product_matches_dense_jacobian() -> None:
    for form in ("sqrt", "l2"):
        params, frame, residual_fn, jac, names, _ = _tiny_problem(form)
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            z = {k: rademacher_like(v, gen) for k, v in params.items()}
            got = _flatten(gauss_newton_product(params, frame, residual_fn, z), names)
            want = jac.T @ (jac @ _flatten(z, names))
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12 * want.abs().max())


def test_gauss_newton_product_backward_runs_without_tangents() -> None:
    """The backward of JᵀJz starts with the residual's tangent freed: Jz is passed detached from
    the graph autograd records for it, and the dual level (which holds the tangents of the
    graph's saved tensors) is left before (the curvature estimate's peak memory)."""
    params, frame, residual_fn, *_ = _tiny_problem()
    freed = []

    def traced(p: dict[str, torch.Tensor], fr: _Frame) -> torch.Tensor:
        r = residual_fn(p, fr)
        tangent = weakref.ref(forward_ad.unpack_dual(r).tangent)
        r.register_hook(lambda grad: freed.append(tangent() is None))
        return r

    z = {k: torch.ones_like(v) for k, v in params.items()}
    got = gauss_newton_product(params, frame, traced, z)
    assert freed == [True]
    want = gauss_newton_product(params, frame, residual_fn, z)
    assert all(torch.equal(got[k], want[k]) for k in params)


def test_gauss_newton_product_records_no_graph_for_the_residual_tangent() -> None:
    """The residuals' tangent (Jz) comes without the graph autograd would record for it, which
    holds the SSIM's intermediates (the curvature estimate's peak memory); r keeps its graph."""
    params, frame, residual_fn, *_ = _tiny_problem()
    seen = []

    def traced(p: dict[str, torch.Tensor], fr: _Frame) -> torch.Tensor:
        r = residual_fn(p, fr)
        primal, tangent = forward_ad.unpack_dual(r)
        seen.append((primal.requires_grad, tangent.requires_grad))
        return r

    gauss_newton_product(params, frame, traced, {k: torch.ones_like(v) for k, v in params.items()})
    assert seen == [(True, False)]


def _check_estimator_converges(estimator, params, frame, residual_fn, jac, names, n: int) -> torch.Tensor:
    """Mean of n single-probe samples vs diag(JᵀJ), with a tolerance of 5 standard errors per entry."""
    gen = torch.Generator().manual_seed(1)
    samples = torch.stack([_flatten(estimator(params, [frame], residual_fn, gen), names) for _ in range(n)])
    diag = (jac * jac).sum(0)
    mean, se = samples.mean(0), samples.std(0) / n ** 0.5
    assert torch.all((mean - diag).abs() <= 5 * se + 1e-12 * diag.abs().max())
    rel = (mean - diag).norm() / diag.norm()
    assert rel < 0.2, rel
    return samples


def test_hutchinson_is_unbiased_for_gn_diagonal() -> None:
    params, frame, residual_fn, jac, names, _ = _tiny_problem()
    samples = _check_estimator_converges(hutchinson, params, frame, residual_fn, jac, names, 200)
    assert (samples < 0).any()  # single Hutchinson samples do go negative (docs/optimizer.md)


def test_gnb_is_unbiased_and_never_negative() -> None:
    params, frame, residual_fn, jac, names, _ = _tiny_problem()
    samples = _check_estimator_converges(gauss_newton_bartlett, params, frame, residual_fn, jac, names, 200)
    assert (samples >= 0).all()
