"""The numba Newton step (trsplat.optim.newton_cpu) against its torch reference, bit for bit."""

from __future__ import annotations

import pytest
import torch

from trsplat.optim.newton_cpu import newton_step_cpu
from trsplat.optim.tr import GUARDS, guarded_newton_step, guarded_newton_step_torch

SPECIAL = [0.0, -0.0, 1e-30, -1e-30, 1e-45, float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 3.0, -2.0]


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pair of special values (including zeros, NaN, ±inf, subnormals, D ≤ 0 and D below
    the floor) plus random gradients and curvatures of mixed signs and magnitudes."""
    special = torch.tensor(SPECIAL, dtype=torch.float64)
    g_sp, d_sp = torch.cartesian_prod(special, special).unbind(1)
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(5000, generator=gen, dtype=torch.float64) * 10 ** torch.randint(-12, 2, (5000,), generator=gen)
    d = torch.randn(5000, generator=gen, dtype=torch.float64) * 10 ** torch.randint(-14, 0, (5000,), generator=gen)
    return torch.cat([g_sp, g]).to(dtype), torch.cat([d_sp, d]).to(dtype)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b) and torch.equal(
        torch.signbit(a), torch.signbit(b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("guard", GUARDS)
@pytest.mark.parametrize("floor", [1e-12, 1e-3])
def test_kernel_matches_torch_bit_for_bit(dtype: torch.dtype, guard: str, floor: float) -> None:
    g, d = _inputs(dtype)
    expected = guarded_newton_step_torch(g, d, guard, floor)
    assert _same_bits(newton_step_cpu(g, d, guard, floor), expected)
    assert _same_bits(guarded_newton_step(g, d, guard, floor), expected)  # the dispatching entry point


def test_kernel_takes_parameter_shapes_and_views() -> None:
    """(N, K, 3) tensors, a non-contiguous view and an empty tensor give the reference's result."""
    g, d = _inputs(torch.float32)
    g3, d3 = g[:4500].reshape(300, 5, 3), d[:4500].reshape(300, 5, 3)
    assert _same_bits(newton_step_cpu(g3, d3, "sophia", 1e-12), guarded_newton_step_torch(g3, d3, "sophia", 1e-12))
    gt, dt = g3.transpose(0, 2), d3.transpose(0, 2)
    assert not gt.is_contiguous()
    assert _same_bits(newton_step_cpu(gt, dt, "abs", 1e-12), guarded_newton_step_torch(gt, dt, "abs", 1e-12))
    empty = torch.zeros(0, 3)
    assert newton_step_cpu(empty, empty, "raw", 1e-12).shape == (0, 3)


def test_newton_step_values() -> None:
    """Known values: −g/max(D, floor) (sophia), −g/max(|D|, floor) (abs), −g/D with 0 at D = 0 (raw)."""
    g = torch.tensor([2.0, 2.0, 2.0, 0.0, 1.0])
    d = torch.tensor([4.0, -4.0, 0.0, 1.0, float("nan")])
    assert guarded_newton_step(g, d, "sophia", 0.5).tolist() == [-0.5, -4.0, -4.0, 0.0, 0.0]
    assert guarded_newton_step(g, d, "abs", 0.5).tolist() == [-0.5, -0.5, -4.0, 0.0, 0.0]
    assert guarded_newton_step(g, d, "raw", 0.5).tolist() == [-0.5, 0.5, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("guard", GUARDS)
def test_no_curvature_tensor_is_a_zero_curvature(dtype: torch.dtype, guard: str) -> None:
    """``d_hat=None`` (``curvature="none"`` keeps no D̂) gives the bits of an explicit D̂ = 0, in
    the kernel and the reference (a floor that is not a float32 value tests its rounding)."""
    g, _ = _inputs(dtype)
    zero = torch.zeros_like(g)
    for floor in (1e-12, 0.1):
        expected = guarded_newton_step_torch(g, zero, guard, floor)
        assert _same_bits(guarded_newton_step_torch(g, None, guard, floor), expected)
        assert _same_bits(newton_step_cpu(g, None, guard, floor), expected)
        assert _same_bits(guarded_newton_step(g, None, guard, floor), expected)
