"""Gaussians container and INRIA PLY layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plyfile import PlyData

from trsplat.errors import TrsplatError
from trsplat.gaussians import SH_C0, init_from_points, load_ply, save_ply
from tests.helpers import random_gaussians


def test_ply_round_trip_is_exact(tmp_path) -> None:
    g = random_gaussians(50, 0)
    save_ply(g, tmp_path / "g.ply")
    back = load_ply(tmp_path / "g.ply")
    for name, t in g.params().items():
        assert torch.equal(t, getattr(back, name)), name


def test_ply_attribute_layout_is_inria(tmp_path) -> None:
    g = random_gaussians(3, 1)
    save_ply(g, tmp_path / "g.ply")
    vertex = PlyData.read(str(tmp_path / "g.ply"))["vertex"]
    names = list(vertex.data.dtype.names)
    expected = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                + [f"f_rest_{i}" for i in range(45)]
                + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    assert names == expected
    assert all(vertex.data.dtype[n] == np.float32 for n in names)
    # f_rest is channel-major: f_rest_{c*15 + j} is channel c of coefficient j+1
    assert vertex["f_rest_16"][2] == pytest.approx(float(g.sh_rest[2, 1, 1]))
    assert vertex["f_rest_30"][0] == pytest.approx(float(g.sh_rest[0, 0, 2]))
    assert vertex["opacity"][1] == pytest.approx(float(g.opacity_logits[1]))  # raw logit
    assert vertex["rot_0"][1] == pytest.approx(float(g.quats[1, 0]))          # w first, unnormalised
    assert np.all(vertex["nx"] == 0)


def test_load_ply_errors(tmp_path) -> None:
    with pytest.raises(TrsplatError, match="no such PLY"):
        load_ply(tmp_path / "missing.ply")
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\nend_header\n")
    with pytest.raises(TrsplatError, match="bad.ply"):
        load_ply(bad)


def test_init_from_points_follows_3dgs() -> None:
    pts = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [5, 5, 5]])
    cols = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0.5], [0, 0, 0]])
    g = init_from_points(pts, cols)
    # point 0: neighbours at distance 1, 2, 3 -> sqrt(mean of squares) = sqrt(14/3)
    assert torch.allclose(g.scales[0], torch.full((3,), (14 / 3) ** 0.5))
    assert torch.allclose(g.opacities, torch.full((5,), 0.1))
    assert torch.allclose(g.sh_dc[:, 0] * SH_C0 + 0.5, cols, atol=1e-6)
    assert torch.equal(g.rotations, torch.tensor([[1.0, 0, 0, 0]]).repeat(5, 1))
    assert g.sh_rest.abs().sum() == 0


def test_count_alive_uses_the_compositing_threshold() -> None:
    g = random_gaussians(4, 0)
    # opacities just above / below 1/255, and two clearly on either side
    opacity = torch.tensor([1 / 255 * 1.01, 1 / 255 * 0.99, 0.5, 1e-6], dtype=torch.float64)
    g.opacity_logits = torch.log(opacity / (1 - opacity)).to(g.opacity_logits.dtype)
    assert g.count_alive() == 2
