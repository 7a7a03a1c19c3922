"""Lens undistortion: OpenCV's models against COLMAP's formulas, COLMAP's choice of pinhole camera,
synthetic images rendered through each model and undistorted back, the on-disk cache, and a real
capture distorted with a known OPENCV model.

Ground truth here is independent of trsplat: COLMAP's distortion formulas written out in numpy,
a Newton solver for their inverse, and images rendered analytically through them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from trsplat.camera import look_at
from trsplat.data import load_scene
from trsplat.data import cache as cache_mod
from trsplat.data import images as images_mod
from trsplat.data.colmap import ColmapCamera, camera_model
from trsplat.data.undistort import Lens, distort, pinhole_for, undistortion_maps
from trsplat.errors import TrsplatError

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
BIRD = SHARED_DATA / "colmap_bird"

W, H = 96, 72
# COLMAP model -> params (COLMAP's order) of a moderately distorted 96x72 camera, off-centre
MODELS: dict[str, tuple[float, ...]] = {
    "SIMPLE_RADIAL": (80.0, 48.3, 35.7, -0.12),
    "RADIAL": (80.0, 48.3, 35.7, -0.1, 0.02),
    "OPENCV": (80.0, 82.0, 48.3, 35.7, -0.08, 0.01, 0.002, -0.003),
    "FULL_OPENCV": (80.0, 82.0, 48.3, 35.7, -0.1, 0.02, 0.001, -0.002, 0.001, 0.05, -0.01, 0.002),
    "OPENCV_FISHEYE": (60.0, 61.0, 48.3, 35.7, 0.05, -0.01, 0.003, -0.001),
    "SIMPLE_RADIAL_FISHEYE": (60.0, 48.3, 35.7, 0.04),
    "RADIAL_FISHEYE": (60.0, 48.3, 35.7, 0.04, -0.01),
}


# -- COLMAP's camera models, written out from COLMAP's definitions ---------------------------------
def split_params(model: str, p: tuple[float, ...]) -> tuple[float, float, float, float, tuple[float, ...]]:
    if model in ("SIMPLE_RADIAL", "RADIAL", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE", "SIMPLE_PINHOLE"):
        return p[0], p[0], p[1], p[2], tuple(p[3:])
    return p[0], p[1], p[2], p[3], tuple(p[4:])


def colmap_distortion(model: str, extra: tuple[float, ...], u: np.ndarray, v: np.ndarray):
    """(du, dv) of COLMAP's ``Distortion`` for normalised (u, v)."""
    u2, v2, uv = u * u, v * v, u * v
    r2 = u2 + v2
    if model == "SIMPLE_RADIAL":
        (k,) = extra
        radial = k * r2
        return u * radial, v * radial
    if model == "RADIAL":
        k1, k2 = extra
        radial = k1 * r2 + k2 * r2 * r2
        return u * radial, v * radial
    if model == "OPENCV":
        k1, k2, p1, p2 = extra
        radial = k1 * r2 + k2 * r2 * r2
        return (u * radial + 2 * p1 * uv + p2 * (r2 + 2 * u2),
                v * radial + 2 * p2 * uv + p1 * (r2 + 2 * v2))
    if model == "FULL_OPENCV":
        k1, k2, p1, p2, k3, k4, k5, k6 = extra
        r4, r6 = r2 * r2, r2 * r2 * r2
        radial = (1 + k1 * r2 + k2 * r4 + k3 * r6) / (1 + k4 * r2 + k5 * r4 + k6 * r6)
        return (u * radial + 2 * p1 * uv + p2 * (r2 + 2 * u2) - u,
                v * radial + 2 * p2 * uv + p1 * (r2 + 2 * v2) - v)
    if model in ("OPENCV_FISHEYE", "SIMPLE_RADIAL_FISHEYE", "RADIAL_FISHEYE"):
        k = list(extra) + [0.0] * (4 - len(extra))
        r = np.sqrt(r2)
        theta = np.arctan(r)
        t2 = theta * theta
        thetad = theta * (1 + k[0] * t2 + k[1] * t2**2 + k[2] * t2**3 + k[3] * t2**4)
        safe = np.where(r > 1e-300, r, 1.0)
        ratio = np.where(r > np.finfo(float).eps, thetad / safe, 1.0)
        return u * ratio - u, v * ratio - v
    raise ValueError(model)


def img_from_cam(model: str, params, x: np.ndarray, y: np.ndarray):
    """COLMAP's ImgFromCam: normalised point -> pixel (continuous convention)."""
    fx, fy, cx, cy, extra = split_params(model, params)
    du, dv = colmap_distortion(model, extra, x, y)
    return fx * (x + du) + cx, fy * (y + dv) + cy


def cam_from_img(model: str, params, px: np.ndarray, py: np.ndarray):
    """COLMAP's CamFromImg: pixel -> normalised point, by Newton's method on the forward map."""
    fx, fy, cx, cy, _ = split_params(model, params)
    tx, ty = (np.asarray(px, float) - cx) / fx, (np.asarray(py, float) - cy) / fy
    x, y = tx.copy(), ty.copy()
    eps = 1e-7
    for _ in range(100):
        def f(a, b):
            du, dv = colmap_distortion(model, split_params(model, params)[4], a, b)
            return a + du - tx, b + dv - ty
        fx0, fy0 = f(x, y)
        ax, ay = f(x + eps, y)
        bx, by = f(x, y + eps)
        j11, j21 = (ax - fx0) / eps, (ay - fy0) / eps
        j12, j22 = (bx - fx0) / eps, (by - fy0) / eps
        det = j11 * j22 - j12 * j21
        dx = (j22 * fx0 - j12 * fy0) / det
        dy = (-j21 * fx0 + j11 * fy0) / det
        x, y = x - dx, y - dy
        if max(np.abs(dx).max(), np.abs(dy).max()) < 1e-12:
            break
    return x, y


def colmap_undistorted_camera(model: str, w: int, h: int, params):
    """COLMAP's UndistortCamera with its default options (blank_pixels 0, scale in [0.2, 2])."""
    fx, fy, cx, cy, _ = split_params(model, params)
    ys, xs = np.arange(h) + 0.5, np.arange(w) + 0.5

    def undist(px, py):
        x, y = cam_from_img(model, params, px, py)
        return fx * x + cx, fy * y + cy

    left_max = undist(np.full_like(ys, 0.5), ys)[0].max()
    right_min = undist(np.full_like(ys, w - 0.5), ys)[0].min()
    top_max = undist(xs, np.full_like(xs, 0.5))[1].max()
    bottom_min = undist(xs, np.full_like(xs, h - 0.5))[1].min()
    max_sx = max(cx / (cx - left_max), (w - 0.5 - cx) / (right_min - cx))
    max_sy = max(cy / (cy - top_max), (h - 0.5 - cy) / (bottom_min - cy))
    sx, sy = np.clip(1 / max_sx, 0.2, 2.0), np.clip(1 / max_sy, 0.2, 2.0)
    nw, nh = int(max(1.0, sx * w)), int(max(1.0, sy * h))
    return nw, nh, fx, fy, cx * nw / w, cy * nh / h


def lens_of(model: str, params=None) -> Lens:
    params = MODELS[model] if params is None else params
    _, lens = camera_model(ColmapCamera(1, model, W, H, tuple(params)))
    assert lens is not None
    return lens


# -- the forward maps and the pinhole camera ---------------------------------------------------------
@pytest.mark.parametrize("model", sorted(MODELS))
def test_forward_map_is_colmaps(model: str) -> None:
    rng = np.random.default_rng(1)
    xy = rng.uniform(-0.7, 0.7, size=(500, 2))
    got = distort(lens_of(model), xy)
    px, py = img_from_cam(model, MODELS[model], xy[:, 0], xy[:, 1])
    np.testing.assert_allclose(got, np.stack([px, py], axis=1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_pinhole_camera_is_colmaps_undistorter_choice(model: str) -> None:
    pin, lens = camera_model(ColmapCamera(1, model, W, H, MODELS[model]))
    assert lens is not None
    w, h, fx, fy, cx, cy = colmap_undistorted_camera(model, W, H, MODELS[model])
    assert (pin.width, pin.height) == (w, h)
    np.testing.assert_allclose([pin.fx, pin.fy, pin.cx, pin.cy], [fx, fy, cx, cy], rtol=0, atol=1e-9)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_no_blank_pixels(model: str) -> None:
    """The crop policy: every pinhole pixel samples inside the distorted image's pixel area."""
    lens = lens_of(model)
    map_x, map_y = undistortion_maps(lens, pinhole_for(lens))
    # OpenCV's index convention: the image covers [-0.5, W - 0.5]
    assert map_x.min() >= -0.5 and map_x.max() <= W - 0.5
    assert map_y.min() >= -0.5 and map_y.max() <= H - 0.5
    # and the crop is tight: some pinhole pixel reaches within a pixel of each border
    assert map_x.min() < 1.0 or map_x.max() > W - 2.0
    assert map_y.min() < 1.0 or map_y.max() > H - 2.0


def test_zero_coefficients_are_pinhole_but_zero_fisheye_is_not() -> None:
    pin, lens = camera_model(ColmapCamera(1, "OPENCV", W, H, (80.0, 82.0, 48.3, 35.7, 0.0, 0.0, 0.0, 0.0)))
    assert lens is None and (pin.width, pin.height, pin.cx) == (W, H, 48.3)
    pin, lens = camera_model(ColmapCamera(1, "OPENCV_FISHEYE", W, H, (60.0, 60.0, 48.3, 35.7, 0, 0, 0, 0)))
    assert lens is not None and lens.kind == "fisheye"
    w, h, *_ = colmap_undistorted_camera("OPENCV_FISHEYE", W, H, (60.0, 60.0, 48.3, 35.7, 0, 0, 0, 0))
    assert (pin.width, pin.height) == (w, h) and pin.width > W  # equidistant: the pinhole is larger


def test_uninvertible_distortion_is_one_line_error() -> None:
    # k1 so negative that the image border folds back (x (1 + k r^2) peaks at r^2 = -1 / (3 k))
    with pytest.raises(TrsplatError, match=r"cameras\.txt: camera 3: the SIMPLE_RADIAL distortion .* cannot be inverted"):
        camera_model(ColmapCamera(3, "SIMPLE_RADIAL", W, H, (40.0, 48.0, 36.0, -0.6)), "cameras.txt")


# -- synthetic images through each model, undistorted back ---------------------------------------------
PERIOD_PX = 12.0  # the pattern's period in pixels at the focal length
AMP = 0.4


def pattern(x: np.ndarray, y: np.ndarray, f: float) -> np.ndarray:
    """A smooth coloured checkerboard on the normalised image plane: (..., 3) in [0.1, 0.9].
    The channels differ, so a swapped channel order shows."""
    a = 2 * math.pi * f / PERIOD_PX
    sx, sy = np.sin(a * x), np.sin(a * y)
    return np.stack([0.5 + AMP * sx * sy,
                     0.5 + AMP * np.cos(a * x + 0.7) * sy,
                     0.5 + AMP * sx * np.cos(0.8 * a * y - 0.4)], axis=-1)


def render_distorted(model: str, params, w: int, h: int, step: float = 1.0, offset: float = 0.5):
    """The pattern as seen through the distorted camera, sampled at pixel positions
    ``offset + step * k`` (pixel centres by default); also returns the sample positions."""
    fx = split_params(model, params)[0]
    us = offset + step * np.arange(int(round(w / step)))
    vs = offset + step * np.arange(int(round(h / step)))
    pu, pv = np.meshgrid(us, vs)
    x, y = cam_from_img(model, params, pu, pv)
    return pattern(x, y, fx)


def write_image(path: Path, rgb: np.ndarray, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    top = 2**bits - 1
    arr = np.round(np.clip(rgb, 0, 1) * top).astype(np.uint8 if bits == 8 else np.uint16)
    assert cv2.imwrite(str(path), arr[:, :, ::-1])


def error_bound(model: str, params, bits: int):
    """A function giving, for source positions (u, v) in the distorted image, the largest error
    bilinear resampling can make there, from the distorted image's own derivatives (differences
    at h = 0.25 px, their maximum within a pixel of (u, v)): (|g_uu| + |g_vv|) / 8 for bilinear
    interpolation, (|g_u| + |g_v|) / 64 for OpenCV's 1/32-pixel position grid, and half a
    quantisation step for the stored input and for the output."""
    from scipy.ndimage import maximum_filter

    h = 0.25
    g = render_distorted(model, params, W + 2, H + 2, step=h, offset=-0.5)  # covers [-0.5, W + 1.5)
    g_uu = np.zeros(g.shape[:2])
    g_vv = np.zeros(g.shape[:2])
    g_uu[:, 1:-1] = np.abs(g[:, 2:] - 2 * g[:, 1:-1] + g[:, :-2]).max(axis=2) / h**2
    g_vv[1:-1] = np.abs(g[2:] - 2 * g[1:-1] + g[:-2]).max(axis=2) / h**2
    g_u = np.zeros(g.shape[:2])
    g_v = np.zeros(g.shape[:2])
    g_u[:, 1:] = np.abs(np.diff(g, axis=1)).max(axis=2) / h
    g_v[1:] = np.abs(np.diff(g, axis=0)).max(axis=2) / h
    window = int(2 / h) + 3
    local = (maximum_filter(g_uu + g_vv, size=window) / 8 + maximum_filter(g_u + g_v, size=window) / 64
             + 2 * 0.5 / (2**bits - 1) + 1e-6)

    def at(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        i = np.clip(np.round((v + 0.5) / h).astype(int), 0, local.shape[0] - 1)
        j = np.clip(np.round((u + 0.5) / h).astype(int), 0, local.shape[1] - 1)
        return local[i, j]

    return at


def write_colmap_capture(root: Path, model: str, params, bits: int, n: int = 2) -> None:
    """A COLMAP text capture of n views sharing one distorted camera, all seeing the pattern."""
    sparse = root / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text(f"1 {model} {W} {H} " + " ".join(repr(p) for p in params) + "\n")
    lines = []
    for i in range(n):
        lines += [f"{i + 1} 1 0 0 0 {0.1 * i} 0 4 1 img_{i}.png", ""]
        write_image(root / "images" / f"img_{i}.png", render_distorted(model, params, W, H), bits)
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    (sparse / "points3D.txt").write_text("1 0 0 0 128 128 128 0.1 1 0\n")


def check_round_trip(image: np.ndarray, model: str, params, fx: float, fy: float, cx: float, cy: float,
                     bits: int) -> float:
    """Compare an undistorted image with the pattern at its pinhole pixel centres; returns PSNR."""
    h, w = image.shape[:2]
    pu, pv = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    x, y = (pu - cx) / fx, (pv - cy) / fy
    truth = pattern(x, y, split_params(model, params)[0])
    # pixels whose source lies between the distorted image's outermost pixel centres (bilinear domain)
    su, sv = img_from_cam(model, params, x, y)
    valid = (su >= 0.5) & (su <= W - 0.5) & (sv >= 0.5) & (sv <= H - 0.5)
    assert valid.mean() > 0.9, valid.mean()
    bound = error_bound(model, params, bits)(su, sv)[valid]
    err = np.abs(image - truth).max(axis=2)[valid]
    assert (err <= bound).all(), (model, float((err - bound).max()))
    psnr = float(-10 * np.log10(np.mean((image - truth)[valid] ** 2)))
    assert psnr >= -20 * np.log10(bound.max()), (model, psnr, float(bound.max()))
    # the bound is tight enough to see a convention slip of half a pixel
    shifted = pattern(x + 0.5 / fx, y, split_params(model, params)[0])
    assert (np.abs(image - shifted).max(axis=2)[valid] > bound).any()
    return psnr


@pytest.mark.parametrize("model", sorted(MODELS))
@pytest.mark.parametrize("bits", [8, 16])
def test_colmap_capture_undistorts_back_to_the_pinhole_pattern(tmp_path: Path, model: str, bits: int,
                                                             capsys) -> None:
    params = MODELS[model]
    write_colmap_capture(tmp_path, model, params, bits)
    scene = load_scene(tmp_path, llffhold=0)
    warned = [line for line in capsys.readouterr().err.splitlines() if line.startswith("trsplat: warning:")]
    assert [("16-bit" in line) for line in warned] == ([True] if bits == 16 else [])
    w, h, fx, fy, cx, cy = colmap_undistorted_camera(model, W, H, params)
    for frame in scene.train:
        cam = frame.camera
        assert (cam.width, cam.height) == (w, h)
        np.testing.assert_allclose([cam.fx, cam.fy, cam.cx, cam.cy], [fx, fy, cx, cy], atol=1e-9)
        check_round_trip(frame.image.numpy().astype(np.float64), model, params, fx, fy, cx, cy, bits)


def _blender_c2w(w2c: torch.Tensor) -> list[list[float]]:
    c2w = torch.linalg.inv(w2c.double())
    c2w[:3, 1:3] *= -1
    return c2w.tolist()


@pytest.mark.parametrize("flavour", ["ngp", "nerfstudio", "ngp_fisheye", "nerfstudio_fisheye"])
def test_transforms_distortion_keys(tmp_path: Path, flavour: str) -> None:
    """instant-ngp (k1 k2 p1 p2, is_fisheye) and nerfstudio (camera_model, k1..k4) keys mean the
    OpenCV models; per-frame intrinsics override the top level."""
    fisheye = flavour.endswith("fisheye")
    model = "OPENCV_FISHEYE" if fisheye else "FULL_OPENCV"
    params = MODELS["OPENCV_FISHEYE"] if fisheye else (80.0, 82.0, 48.3, 35.7, -0.1, 0.02, 0.001, -0.002, 0.003, 0, 0, 0)
    fx, fy, cx, cy, extra = split_params(model, params)
    top = {"fl_x": fx, "fl_y": fy, "cx": cx, "cy": cy, "w": W, "h": H}
    if fisheye:
        top.update(dict(zip(("k1", "k2", "k3", "k4"), extra)))
        top.update({"is_fisheye": True} if flavour.startswith("ngp") else {"camera_model": "OPENCV_FISHEYE"})
    else:
        top.update(dict(zip(("k1", "k2", "p1", "p2", "k3"), extra[:5])))
        if flavour == "nerfstudio":
            top.update({"camera_model": "OPENCV", "applied_transform": np.eye(4)[:3].tolist()})
    poses = [look_at(torch.tensor([0.0, -4.0, 0.5 * i]), torch.zeros(3), torch.tensor([0.0, 0.0, 1.0])) for i in range(3)]
    frames = []
    for i, w2c in enumerate(poses):
        write_image(tmp_path / "images" / f"f{i}.png", render_distorted(model, params, W, H), 8)
        frames.append({"file_path": f"images/f{i}.png", "transform_matrix": _blender_c2w(w2c)})
    frames[2].update({"w": W + 8})  # a frame with its own (wrong) size fails on its own
    (tmp_path / "transforms.json").write_text(json.dumps({**top, "frames": frames[:2]}))
    scene = load_scene(tmp_path, llffhold=0)
    w, h, nfx, nfy, ncx, ncy = colmap_undistorted_camera(model, W, H, params)
    for frame, w2c in zip(scene.train, poses):
        assert (frame.camera.width, frame.camera.height) == (w, h)
        torch.testing.assert_close(frame.camera.world_to_camera, w2c, atol=1e-5, rtol=0)
        check_round_trip(frame.image.numpy().astype(np.float64), model, params, nfx, nfy, ncx, ncy, 8)
    (tmp_path / "transforms.json").write_text(json.dumps({**top, "frames": frames}))
    with pytest.raises(TrsplatError, match=rf"f2\.png: image is {W}x{H} pixels but its camera 'images/f2\.png' is {W + 8}x{H}"):
        load_scene(tmp_path, llffhold=0)


# -- the cache --------------------------------------------------------------------------------------
def _count_remaps(monkeypatch) -> list[int]:
    calls = [0]
    real = images_mod.undistort_array

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(images_mod, "undistort_array", counting)
    return calls


def test_cache_second_load_reads_the_cache(tmp_path: Path, monkeypatch) -> None:
    write_colmap_capture(tmp_path, "OPENCV", MODELS["OPENCV"], 8, n=3)
    calls = _count_remaps(monkeypatch)
    first = load_scene(tmp_path, llffhold=0)
    assert calls[0] == 3
    folders = list((tmp_path / ".trsplat_cache").glob("undistorted-*"))
    assert len(folders) == 1
    record = json.loads((folders[0] / "cameras.json").read_text())
    assert record["distorted"]["model"] == "OPENCV" and record["pinhole"]["width"] == first.train[0].camera.width
    cached = sorted(p.name for p in (folders[0] / "images").iterdir())
    assert len(cached) == 3 and all(n.startswith("img_") and n.endswith(".npy") for n in cached)
    assert not list(folders[0].rglob("*.tmp"))
    second = load_scene(tmp_path, llffhold=0, downscale=2)
    assert calls[0] == 3  # nothing undistorted again
    again = load_scene(tmp_path, llffhold=0)
    for a, b in zip(first.train, again.train):
        assert torch.equal(a.image, b.image)
    assert second.train[0].image.shape[:2] == (round(first.train[0].camera.height / 2),
                                               round(first.train[0].camera.width / 2))
    # an edited image is undistorted again; the others are not
    img = tmp_path / "images" / "img_1.png"
    st = img.stat()
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_scene(tmp_path, llffhold=0)
    assert calls[0] == 4
    # other coefficients: another folder
    (tmp_path / "sparse" / "0" / "cameras.txt").write_text(
        f"1 OPENCV {W} {H} 80.0 82.0 48.3 35.7 -0.07 0.01 0.002 -0.003\n")
    load_scene(tmp_path, llffhold=0)
    assert calls[0] == 7 and len(list((tmp_path / ".trsplat_cache").glob("undistorted-*"))) == 2


def test_cache_falls_back_to_user_cache_when_capture_is_read_only(tmp_path: Path, monkeypatch) -> None:
    capture = tmp_path / "capture"
    write_colmap_capture(capture, "RADIAL", MODELS["RADIAL"], 8)
    real = cache_mod.folder_is_writable
    monkeypatch.setattr(cache_mod, "folder_is_writable",
                        lambda folder: False if capture in Path(folder).parents or Path(folder) == capture else real(folder))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    scene = load_scene(capture, llffhold=0)
    assert not (capture / ".trsplat_cache").exists()
    found = list((tmp_path / "xdg" / "trsplat" / "captures").glob("capture-*/undistorted-*/images/img_0.png.*.npy"))
    assert len(found) == 1
    assert cache_mod.user_cache_dir() == tmp_path / "xdg" / "trsplat"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_mod.user_cache_dir() == Path.home() / ".cache" / "trsplat"
    assert len(scene.train) == 2


def test_rgba_distorted_image_is_composited_after_undistortion(tmp_path: Path) -> None:
    params = MODELS["OPENCV"]
    write_colmap_capture(tmp_path, "OPENCV", params, 8)
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = 0
    rgba[: H // 2, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "images" / "img_1.png")
    for bg, value in (("black", 0.0), ("white", 1.0)):
        img = load_scene(tmp_path, llffhold=0, background=bg).train[1].image.numpy()
        np.testing.assert_allclose(img[-1, :, 1], value, atol=1e-6)  # transparent bottom rows: background
        np.testing.assert_allclose(img[0, :, 0], 200 / 255, atol=1e-6)  # opaque top rows: red 200


# -- a real capture distorted with a known OPENCV model --------------------------------------------------
def _bilinear(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Sample (H, W, C) at continuous pixel positions (centres at +0.5), bilinear, edges clamped."""
    h, w = img.shape[:2]
    x, y = np.clip(u - 0.5, 0, w - 1), np.clip(v - 0.5, 0, h - 1)
    x0, y0 = np.minimum(np.floor(x).astype(int), w - 2), np.minimum(np.floor(y).astype(int), h - 2)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    return ((img[y0, x0] * (1 - fx) + img[y0, x0 + 1] * fx) * (1 - fy)
            + (img[y0 + 1, x0] * (1 - fx) + img[y0 + 1, x0 + 1] * fx) * fy)


@pytest.mark.skipif(not BIRD.is_dir(), reason="shared data not available")
def test_real_capture_with_known_opencv_distortion(tmp_path: Path) -> None:
    """Four bird images (downscaled 4x, 136x240) distorted through a known OPENCV camera, loaded
    and undistorted by trsplat, compared with the original images at the pinhole camera's pixels.

    Threshold: what interpolation alone costs. An ideal undistorter (exact positions from
    COLMAP's formulas, bilinear resampling of the stored distorted image in float64) reaches
    some PSNR against the originals; trsplat's must come within 0.5 dB of it (OpenCV samples at
    1/32-pixel positions and rounds to 8 bits). A half-pixel slip must fall below that."""
    from trsplat.data import colmap as colmap_mod

    model = colmap_mod.read_model(BIRD)
    names = sorted(im.name for im in model.images.values())[::46][:4]
    by_name = {im.name: im for im in model.images.values()}
    k = 4
    params_of = {}
    originals = {}
    lines = []
    cams = []
    for i, name in enumerate(names):
        im = by_name[name]
        cam = model.cameras[im.camera_id]
        f, cx, cy = (p / k for p in cam.params)
        w, h = cam.width // k, cam.height // k
        orig = np.asarray(Image.open(BIRD / "images" / name).convert("RGB").resize((w, h), Image.Resampling.BOX),
                          dtype=np.float64) / 255
        originals[name] = orig
        params = (f, f * 1.01, cx + 0.7, cy - 0.4, -0.06, 0.008, 0.001, -0.0015)
        params_of[name] = params
        # the distorted image: each distorted pixel shows the original where its ray meets the pinhole image
        pu, pv = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
        x, y = cam_from_img("OPENCV", params, pu, pv)
        src = _bilinear(orig, f * x + cx, f * y + cy)
        write_image(tmp_path / "images" / name, src, 8)
        cams.append(f"{i + 1} OPENCV {w} {h} " + " ".join(repr(p) for p in params))
        lines += [f"{i + 1} {' '.join(map(repr, im.qvec))} {' '.join(map(repr, im.tvec))} {i + 1} {name}", ""]
    sparse = tmp_path / "sparse" / "0"
    sparse.mkdir(parents=True)
    (sparse / "cameras.txt").write_text("\n".join(cams) + "\n")
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    (sparse / "points3D.txt").write_text("".join(
        f"{j + 1} {p[0]} {p[1]} {p[2]} 100 100 100 0.5 1 0\n" for j, p in enumerate(model.xyz[:200])))

    scene = load_scene(tmp_path, llffhold=0)
    assert len(scene.train) == 4 and scene.points is not None and scene.points.shape == (200, 3)
    from trsplat.data import init_gaussians

    assert len(init_gaussians(scene)) == 200
    for frame, name in zip(scene.train, names):
        cam, orig = frame.camera, originals[name]
        h, w = orig.shape[:2]
        f, cx, cy = (p / k for p in model.cameras[by_name[name].camera_id].params)
        pu, pv = np.meshgrid(np.arange(cam.width) + 0.5, np.arange(cam.height) + 0.5)
        x, y = (pu - cam.cx) / cam.fx, (pv - cam.cy) / cam.fy
        truth = _bilinear(orig, f * x + cx, f * y + cy)
        # valid: the pinhole pixel's source lies inside the original, two pixels from its border
        du, dv = img_from_cam("OPENCV", params_of[name], x, y)
        ou, ov = f * x + cx, f * y + cy
        valid = ((du >= 0.5) & (du <= w - 0.5) & (dv >= 0.5) & (dv <= h - 0.5)
                 & (ou >= 2) & (ou <= w - 2) & (ov >= 2) & (ov <= h - 2))
        assert valid.mean() > 0.9
        got = frame.image.numpy().astype(np.float64)
        stored = np.asarray(Image.open(tmp_path / "images" / name), dtype=np.float64) / 255
        ideal = _bilinear(stored, du, dv)

        def psnr(a: np.ndarray, b: np.ndarray) -> float:
            return float(-10 * np.log10(np.mean((a - b)[valid] ** 2)))

        reference = psnr(ideal, truth)
        assert psnr(got, truth) >= reference - 0.5, (name, psnr(got, truth), reference)
        # a half-pixel slip in the conventions would not pass
        assert psnr(_bilinear(stored, du + 0.5, dv), truth) < reference - 0.5

