"""Tests of trsplat.loss: 3DGS SSIM/L1 loss and the Gauss–Newton residual forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD
from scipy.signal import correlate2d

from trsplat.loss import (
    SSIM_C1,
    SSIM_C2,
    l1,
    residual_loss,
    residuals,
    ssim,
    ssim_map,
    training_loss,
)

# torch's forward-AD decompositions call the deprecated torch.jit.script on first use.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


# ----------------------------------------------------------------------------------------------
# Independent numpy/scipy SSIM (explicit 2-D window, zero padding, float64)
# ----------------------------------------------------------------------------------------------


def _np_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    ax = np.arange(size) - size // 2
    yy, xx = np.meshgrid(ax, ax, indexing="ij")
    w = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    return w / w.sum()


def _np_ssim_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """SSIM map of (H, W, C) arrays; 'same' correlation with zero fill, per channel."""
    w = _np_window()
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    out = np.empty_like(a)
    for c in range(a.shape[-1]):
        x, y = a[..., c], b[..., c]

        def filt(z: np.ndarray) -> np.ndarray:
            return correlate2d(z, w, mode="same", boundary="fill", fillvalue=0.0)

        mx, my = filt(x), filt(y)
        sxx = filt(x * x) - mx * mx
        syy = filt(y * y) - my * my
        sxy = filt(x * y) - mx * my
        out[..., c] = ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / (
            (mx * mx + my * my + SSIM_C1) * (sxx + syy + SSIM_C2)
        )
    return out


def _pair(h: int = 24, w: int = 31, seed: int = 0, noise: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    gt = torch.rand(h, w, 3, generator=g)
    img = (gt + noise * torch.randn(h, w, 3, generator=g)).clamp(0.0, 1.0)
    return img, gt


# ----------------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------------


def test_ssim_map_matches_numpy_reference() -> None:
    img, gt = _pair(24, 31)
    ours = ssim_map(img, gt)
    ref = _np_ssim_map(img.numpy(), gt.numpy())
    assert ours.shape == img.shape and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-5, rtol=0)
    assert abs(ssim(img, gt).item() - ref.mean()) < 1e-6
    # float64 agrees to rounding
    ours64 = ssim_map(img.double(), gt.double()).numpy()
    np.testing.assert_allclose(ours64, ref, atol=1e-12, rtol=0)


def test_ssim_map_pointwise_loop_at_border() -> None:
    """Explicit double loop for a corner pixel (window half outside the image → zeros)."""
    img, gt = _pair(9, 12, seed=3)
    a, b = img.double().numpy(), gt.double().numpy()
    w = _np_window()
    i, j, c = 1, 10, 2
    s = {"x": 0.0, "y": 0.0, "xx": 0.0, "yy": 0.0, "xy": 0.0}
    for di in range(-5, 6):
        for dj in range(-5, 6):
            ii, jj = i + di, j + dj
            if 0 <= ii < a.shape[0] and 0 <= jj < a.shape[1]:
                x, y, k = a[ii, jj, c], b[ii, jj, c], w[di + 5, dj + 5]
                s["x"] += k * x
                s["y"] += k * y
                s["xx"] += k * x * x
                s["yy"] += k * y * y
                s["xy"] += k * x * y
    mx, my = s["x"], s["y"]
    ref = ((2 * mx * my + SSIM_C1) * (2 * (s["xy"] - mx * my) + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * (s["xx"] - mx * mx + s["yy"] - my * my + SSIM_C2)
    )
    assert ssim_map(img.double(), gt.double())[i, j, c].item() == pytest.approx(ref, abs=1e-12)


def test_ssim_identical_is_one() -> None:
    img, _ = _pair()
    assert ssim(img, img).item() == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_allclose(ssim_map(img, img).numpy(), 1.0, atol=1e-5)


def test_ssim_constant_images_known_value() -> None:
    """Away from the border, constant images a, b give (2ab + C1) / (a² + b² + C1)."""
    a = torch.full((30, 30, 3), 0.5, dtype=torch.float64)
    b = torch.full((30, 30, 3), 0.25, dtype=torch.float64)
    expected = (2 * 0.5 * 0.25 + SSIM_C1) / (0.25 + 0.0625 + SSIM_C1)
    interior = ssim_map(a, b)[5:-5, 5:-5]
    np.testing.assert_allclose(interior.numpy(), expected, rtol=1e-9)
    assert expected == pytest.approx(0.8000639795, abs=1e-10)


def test_ssim_batch_equals_per_image() -> None:
    pairs = [_pair(16, 20, seed=s) for s in range(3)]
    img = torch.stack([p[0] for p in pairs])
    gt = torch.stack([p[1] for p in pairs])
    batched = ssim_map(img, gt)
    for k, (a, b) in enumerate(pairs):
        torch.testing.assert_close(batched[k], ssim_map(a, b))
    assert ssim(img, gt).item() == pytest.approx(
        float(np.mean([ssim(a, b).item() for a, b in pairs])), abs=1e-7
    )


def test_shape_errors() -> None:
    with pytest.raises(ValueError):
        ssim(torch.zeros(8, 8, 3), torch.zeros(8, 9, 3))
    with pytest.raises(ValueError):
        l1(torch.zeros(8, 3), torch.zeros(8, 3))
    with pytest.raises(ValueError):
        residuals(torch.zeros(8, 8, 3), torch.zeros(8, 8, 3), form="abs")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# L1 / training loss
# ----------------------------------------------------------------------------------------------


def test_l1_and_training_loss_values() -> None:
    gt = torch.zeros(8, 8, 3)
    img = torch.full((8, 8, 3), 0.25)
    assert l1(img, gt).item() == pytest.approx(0.25)
    a, b = _pair()
    ref = 0.8 * np.abs(a.numpy() - b.numpy()).mean() + 0.2 * (1 - _np_ssim_map(a.numpy(), b.numpy()).mean())
    assert training_loss(a, b).item() == pytest.approx(ref, abs=1e-6)
    assert training_loss(a, b, lambda_dssim=0.0).item() == pytest.approx(l1(a, b).item())


# ----------------------------------------------------------------------------------------------
# Residual forms
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 0.2, 0.7, 1.0])
@pytest.mark.parametrize("delta", [1e-6, 1e-3])
def test_sqrt_residuals_reproduce_loss(lam: float, delta: float) -> None:
    img, gt = _pair()
    img, gt = img.double(), gt.double()
    r = residuals(img, gt, form="sqrt", lambda_dssim=lam, delta=delta)
    assert r.shape == (2 * img.numel(),)
    # ½‖r‖² = L + δ (the brief's bound δ·count/2 is far looser)
    assert residual_loss(r).item() == pytest.approx(
        training_loss(img, gt, lam).item() + delta, abs=1e-12
    )


def test_sqrt_residuals_float32_and_batch() -> None:
    pairs = [_pair(12, 14, seed=s) for s in range(2)]
    img = torch.stack([p[0] for p in pairs])
    gt = torch.stack([p[1] for p in pairs])
    r = residuals(img, gt, delta=1e-6)
    assert r.dtype == torch.float32 and r.shape == (2 * img.numel(),)
    assert residual_loss(r).item() == pytest.approx(training_loss(img, gt).item() + 1e-6, rel=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.2, 1.0])
def test_sqrt_residual_gradient_equals_loss_gradient(lam: float) -> None:
    img, gt = _pair(16, 18, seed=1)
    img, gt = img.double(), gt.double()
    gt[:2] = img[:2]  # includes e = 0 pixels: same subgradient convention (sign(0) = 0)
    x1 = img.clone().requires_grad_(True)
    x2 = img.clone().requires_grad_(True)
    residual_loss(residuals(x1, gt, lambda_dssim=lam, delta=1e-6)).backward()
    training_loss(x2, gt, lam).backward()
    assert x1.grad is not None and x2.grad is not None
    assert torch.isfinite(x1.grad).all()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-7, atol=1e-12)


def test_l2_residuals() -> None:
    img, gt = _pair()
    img, gt = img.double(), gt.double()
    lam = 0.2
    r = residuals(img, gt, form="l2", lambda_dssim=lam)
    e = (img - gt).numpy()
    d = 1 - _np_ssim_map(img.numpy(), gt.numpy())
    expected = (1 - lam) * np.mean(e**2) + lam * np.mean(d**2)
    assert residual_loss(r).item() == pytest.approx(expected, rel=1e-9)
    # linear in e for the L1 block
    n = img.numel()
    np.testing.assert_allclose(r[:n].numpy(), math.sqrt(2 * (1 - lam) / n) * e.reshape(-1))


# ----------------------------------------------------------------------------------------------
# Forward-mode AD and the Gauss–Newton product pattern
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["sqrt", "l2"])
def test_forward_mode_matches_jacobian(form: str) -> None:
    img, gt = _pair(7, 6, seed=2)
    img, gt = img.double(), gt.double()
    v = torch.randn(img.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def f(x: torch.Tensor) -> torch.Tensor:
        return residuals(x, gt, form=form)  # type: ignore[arg-type]

    jac = torch.autograd.functional.jacobian(f, img).reshape(-1, img.numel())
    jv_ref = jac @ v.reshape(-1)

    _, jv_func = torch.func.jvp(f, (img,), (v,))
    torch.testing.assert_close(jv_func, jv_ref)

    # central finite differences agree too (analytic check of the Jacobian itself)
    h = 1e-6
    fd = (f(img + h * v) - f(img - h * v)) / (2 * h)
    torch.testing.assert_close(jv_ref, fd, rtol=1e-4, atol=1e-7)

    # the Hutchinson pattern of docs/optimizer.md: forward-AD tangent, then backward with the tangent as cotangent → JᵀJv
    x = img.clone().requires_grad_(True)
    with fwAD.dual_level():
        r = f(fwAD.make_dual(x, v))
        primal, tangent = fwAD.unpack_dual(r)
        torch.testing.assert_close(tangent, jv_ref)
        primal.backward(tangent)
    assert x.grad is not None
    torch.testing.assert_close(x.grad.reshape(-1), jac.T @ jv_ref)


@pytest.mark.parametrize("form", ["sqrt", "l2"])
def test_forward_mode_under_autograd_records_no_graph_for_the_tangent(form: str) -> None:
    """A dual image whose primal requires grad (the Gauss–Newton products): r's tangent is
    computed without the graph autograd would record for it (the SSIM's intermediates: the
    curvature estimate's peak memory), with the same values, and r's primal keeps its graph."""
    from trsplat.loss import _residuals

    img, gt = _pair(12, 9, seed=3)
    v = torch.randn(img.shape, generator=torch.Generator().manual_seed(7))
    w = torch.randn(2 * img.numel(), generator=torch.Generator().manual_seed(8))
    x = img.clone().requires_grad_(True)
    with fwAD.dual_level():
        primal, tangent = fwAD.unpack_dual(residuals(fwAD.make_dual(x, v), gt, form=form))  # type: ignore[arg-type]
        ref_primal, ref_tangent = fwAD.unpack_dual(_residuals(fwAD.make_dual(x, v), gt, form, 0.2, 1e-6))  # type: ignore[arg-type]
        assert ref_tangent.requires_grad and not tangent.requires_grad
        assert torch.equal(primal, ref_primal) and torch.equal(tangent, ref_tangent)
        (grad,) = torch.autograd.grad(primal, x, w)
        (ref_grad,) = torch.autograd.grad(ref_primal, x, w)
    assert torch.equal(grad, ref_grad)


def test_forward_mode_training_loss_and_ssim() -> None:
    img, gt = _pair(10, 9, seed=4)
    img, gt = img.double(), gt.double()
    v = torch.randn(img.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    x = img.clone().requires_grad_(True)
    training_loss(x, gt).backward()
    assert x.grad is not None
    _, jvp = torch.func.jvp(lambda z: training_loss(z, gt), (img,), (v,))
    assert jvp.item() == pytest.approx((x.grad * v).sum().item(), rel=1e-10)
    with fwAD.dual_level():
        s = ssim(fwAD.make_dual(img, v), gt)
        tangent = fwAD.unpack_dual(s).tangent
    _, ref = torch.func.jvp(lambda z: ssim(z, gt), (img,), (v,))
    assert tangent is not None and tangent.item() == pytest.approx(ref.item(), rel=1e-12)
