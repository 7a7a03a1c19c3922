"""NeRF-synthetic (Blender) and instant-ngp transforms readers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trsplat.data.images import load_view
from trsplat.data.transforms import read_transforms
from trsplat.errors import TrsplatError

# Blender c2w of a camera at (0, 0, 4) looking at the origin (OpenGL: looks down -z, +y up)
C2W_Z4 = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 4.0], [0.0, 0.0, 0.0, 1.0]]


def orbit_c2w(angle: float, radius: float = 4.0) -> list[list[float]]:
    """OpenGL c2w of a camera on a horizontal circle (z up world, NeRF-synthetic style) looking
    at the origin."""
    eye = np.array([radius * math.cos(angle), radius * math.sin(angle), 1.0])
    back = eye / np.linalg.norm(eye)  # camera +z (OpenGL) points away from the target
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, up, back, eye
    return m.tolist()


def write_png(path: Path, w: int, h: int, mode: str = "RGBA", value=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if value is None:
        value = (200, 100, 50, 128) if mode == "RGBA" else (200, 100, 50)
    Image.new(mode, (w, h), value).save(path)


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_blender_camera_at_z4_sees_origin_at_depth_4(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "r_0.png", 40, 30)
    angle = 0.6911112070083618
    js = write_json(tmp_path / "transforms_train.json", {
        "camera_angle_x": angle,
        "frames": [{"file_path": "./train/r_0", "transform_matrix": C2W_Z4}]})
    (view,) = read_transforms(js)
    cam = view.camera
    assert view.image_path == tmp_path / "train" / "r_0.png"
    assert cam.name == "train/r_0.png"
    assert (cam.width, cam.height) == (40, 30)
    assert cam.fx == pytest.approx(0.5 * 40 / math.tan(angle / 2)) and cam.fy == cam.fx
    assert (cam.cx, cam.cy) == (20.0, 15.0)
    w2c = cam.world_to_camera
    assert w2c.dtype.is_floating_point and tuple(w2c.shape) == (4, 4)

    def to_cam(p):
        return (w2c[:3, :3].double() @ torch_vec(p) + w2c[:3, 3].double()).numpy()

    np.testing.assert_allclose(to_cam([0, 0, 0]), [0, 0, 4], atol=1e-6)
    assert to_cam([1, 0, 0])[0] > 0  # world +x is image right
    assert to_cam([0, 1, 0])[1] < 0  # world +y (Blender camera up) is image up = -y in OpenCV
    np.testing.assert_allclose(cam.camera_center.numpy(), [0, 0, 4], atol=1e-6)


def torch_vec(p):
    import torch

    return torch.tensor(p, dtype=torch.float64)


def test_orbit_cameras_look_at_origin_and_camera_angle_y(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / f"img_{i}.jpg", 64, 48, mode="RGB")
    js = write_json(tmp_path / "transforms_train.json", {
        "camera_angle_x": 1.0, "camera_angle_y": 0.8,
        "frames": [{"file_path": f"img_{i}.jpg", "transform_matrix": orbit_c2w(2.0 * i)}
                   for i in range(3)]})
    views = read_transforms(js)
    for v in views:
        cam = v.camera
        assert cam.fy == pytest.approx(0.5 * 48 / math.tan(0.4))
        w2c = cam.world_to_camera.double().numpy()
        origin_cam = w2c[:3, 3]
        assert origin_cam[2] > 0  # in front
        u = cam.fx * origin_cam[0] / origin_cam[2] + cam.cx
        v_ = cam.fy * origin_cam[1] / origin_cam[2] + cam.cy
        np.testing.assert_allclose([u, v_], [32.0, 24.0], atol=1e-4)


def test_rgba_composited_on_background(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 8, 6, value=(200, 100, 50, 128))
    js = write_json(tmp_path / "transforms_train.json", {
        "camera_angle_x": 0.7, "frames": [{"file_path": "a", "transform_matrix": C2W_Z4}]})
    (view,) = read_transforms(js)
    a = 128 / 255
    for bg in [(1.0, 1.0, 1.0), (0.0, 0.0, 0.0)]:
        cam, img = load_view(view, background=bg)
        assert img.shape == (6, 8, 3) and img.dtype.is_floating_point
        expected = np.array([200, 100, 50]) / 255 * a + np.array(bg) * (1 - a)
        np.testing.assert_allclose(img[2, 3].numpy(), expected, atol=1.0 / 255)


def ngp_json(tmp_path: Path, frames: list[dict], **top) -> Path:
    return write_json(tmp_path / "transforms.json", {**top, "frames": frames})


def test_ngp_top_level_and_per_frame_intrinsics(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "images" / f"{i:03d}.png", 50, 40, mode="RGB")
    frames = [{"file_path": f"images/{i:03d}.png", "transform_matrix": orbit_c2w(i)} for i in range(3)]
    frames[1].update({"fl_x": 70.0, "fl_y": 72.0, "cx": 26.0})
    frames[2].update({"camera_angle_x": 1.2})
    js = ngp_json(tmp_path, frames, fl_x=60.0, fl_y=61.0, cx=25.5, cy=19.5, w=50, h=40,
                  k1=0.0, k2=0.0, p1=0.0, p2=0.0, aabb_scale=16)
    v0, v1, v2 = (v.camera for v in read_transforms(js))
    assert (v0.fx, v0.fy, v0.cx, v0.cy, v0.width, v0.height) == (60.0, 61.0, 25.5, 19.5, 50, 40)
    assert (v1.fx, v1.fy, v1.cx, v1.cy) == (70.0, 72.0, 26.0, 19.5)
    # frame 2: its own field of view beats the inherited fl_x; fl_y is still inherited
    assert v2.fx == pytest.approx(25 / math.tan(0.6)) and v2.fy == 61.0
    assert (v2.cx, v2.cy) == (25.5, 19.5)


def test_ngp_camera_angle_fallback_and_header_size(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", 30, 20, mode="RGB")
    js = ngp_json(tmp_path, [{"file_path": "x.png", "transform_matrix": C2W_Z4}],
                  camera_angle_x=1.0, camera_angle_y=0.5)
    (v,) = read_transforms(js)
    cam = v.camera
    assert (cam.width, cam.height) == (30, 20)
    assert cam.fx == pytest.approx(15 / math.tan(0.5)) and cam.fy == pytest.approx(10 / math.tan(0.25))
    assert (cam.cx, cam.cy) == (15.0, 10.0)


def test_missing_frames_skipped_with_one_warning(tmp_path: Path, capsys) -> None:
    for i in (0, 2, 3):
        write_png(tmp_path / f"f{i}.png", 10, 10, mode="RGB")
    frames = [{"file_path": f"f{i}", "transform_matrix": C2W_Z4} for i in range(5)]
    js = ngp_json(tmp_path, frames, camera_angle_x=0.9)
    views = read_transforms(js)
    assert [v.camera.name for v in views] == ["f0.png", "f2.png", "f3.png"]
    err = capsys.readouterr().err
    assert err.count("trsplat: warning:") == 1
    assert "trsplat: warning: transforms.json: 2 of 5 frames skipped: image file missing" in err


def test_all_frames_missing_is_an_error(tmp_path: Path) -> None:
    js = ngp_json(tmp_path, [{"file_path": "nope.png", "transform_matrix": C2W_Z4}], camera_angle_x=0.9)
    with pytest.raises(TrsplatError, match=r"transforms\.json.*none of the 1 frames"):
        read_transforms(js)


@pytest.mark.parametrize("key, index", [("k1", 0), ("k2", 1), ("p1", 2), ("p2", 3), ("k3", 4)])
def test_ngp_distortion_gives_a_lens(tmp_path: Path, key: str, index: int) -> None:
    write_png(tmp_path / "x.png", 30, 20, mode="RGB")
    frame = {"file_path": "x.png", "transform_matrix": C2W_Z4}
    js = ngp_json(tmp_path, [frame], fl_x=30.0, w=30, h=20, **{"k1": 0.0, key: 0.01})
    (view,) = read_transforms(js)
    assert view.lens is not None and view.lens.kind == "perspective" and view.lens.model == "OPENCV"
    expected = [0.0] * 8
    expected[index] = 0.01
    assert view.lens.coeffs == tuple(expected)
    assert (view.lens.width, view.lens.height, view.lens.fx, view.lens.cx) == (30, 20, 30.0, 15.0)
    assert view.camera.fx == 30.0 and view.camera.cx == pytest.approx(15.0 * view.camera.width / 30)
    # per-frame distortion also counts, and zero distortion is a pinhole camera
    frame[key] = -0.02
    (view,) = read_transforms(ngp_json(tmp_path, [frame], fl_x=30.0, w=30, h=20))
    assert view.lens is not None and view.lens.coeffs[index] == -0.02
    frame[key] = 0.0
    (view,) = read_transforms(ngp_json(tmp_path, [frame], fl_x=30.0, w=30, h=20))
    assert view.lens is None and (view.camera.width, view.camera.height) == (30, 20)


@pytest.mark.parametrize("top", [{"is_fisheye": True}, {"camera_model": "OPENCV_FISHEYE"}])
def test_fisheye_keys(tmp_path: Path, top: dict) -> None:
    write_png(tmp_path / "x.png", 30, 20, mode="RGB")
    frame = {"file_path": "x.png", "transform_matrix": C2W_Z4}
    (view,) = read_transforms(ngp_json(tmp_path, [frame], fl_x=30.0, w=30, h=20, k1=0.01, k2=0.002,
                                       k3=-0.001, k4=0.0005, **top))
    assert view.lens is not None and view.lens.kind == "fisheye"
    assert view.lens.coeffs == (0.01, 0.002, -0.001, 0.0005)


@pytest.mark.parametrize("top, message", [
    ({"k4": 0.01}, r"k4=0\.01 on a perspective camera is not supported"),
    ({"camera_model": "OPENCV", "k4": 0.01}, r"k4=0\.01 on a perspective camera"),
    ({"is_fisheye": True, "p1": 0.01}, r"a fisheye camera has no tangential distortion, but p1=0\.01"),
    ({"camera_model": "EQUIRECTANGULAR"}, r"camera_model 'EQUIRECTANGULAR' is not supported"),
    ({"camera_model": "OPENCV", "is_fisheye": True}, r"camera_model OPENCV contradicts is_fisheye"),
    ({"k1": "lots"}, r"k1 = 'lots' is not a number"),
])
def test_lens_errors_name_file_and_frame(tmp_path: Path, top: dict, message: str) -> None:
    write_png(tmp_path / "x.png", 30, 20, mode="RGB")
    js = ngp_json(tmp_path, [{"file_path": "x.png", "transform_matrix": C2W_Z4}], fl_x=30.0, w=30, h=20, **top)
    with pytest.raises(TrsplatError, match=r"transforms\.json: frame 0 \(x\.png\): " + message):
        read_transforms(js)


def test_nerfstudio_extras(tmp_path: Path, capsys) -> None:
    from plyfile import PlyData, PlyElement

    from trsplat.data.transforms import read_transforms_points

    for i in range(2):
        write_png(tmp_path / "images" / f"frame_{i:05d}.png", 30, 20, mode="RGB")
    frames = [{"file_path": f"images/frame_{i:05d}.png", "transform_matrix": orbit_c2w(i)} for i in range(2)]
    frames[1]["mask_path"] = "masks/frame_00001.png"
    top = {"camera_model": "OPENCV", "fl_x": 30.0, "fl_y": 30.0, "cx": 15.0, "cy": 10.0, "w": 30, "h": 20,
           "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0,
           "applied_transform": [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]], "ply_file_path": "sparse_pc.ply"}
    js = ngp_json(tmp_path, frames, **top)
    views = read_transforms(js)
    assert re.search(r"^trsplat: warning: .*1 frames have a mask_path .*alpha channel", capsys.readouterr().err, re.M)
    assert [v.lens for v in views] == [None, None]
    assert read_transforms_points(js) is None
    assert re.search(r"^trsplat: warning: .*sparse_pc\.ply does not exist; starting from random points",
                     capsys.readouterr().err, re.M)
    pts = np.array([(0.5, -1.0, 2.0, 255, 0, 51), (1.0, 2.0, 3.0, 0, 255, 0)],
                   dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(pts, "vertex")]).write(str(tmp_path / "sparse_pc.ply"))
    xyz, rgb, ply = read_transforms_points(js)
    assert ply == tmp_path / "sparse_pc.ply"
    np.testing.assert_allclose(xyz, [[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]])
    np.testing.assert_allclose(rgb, [[1.0, 0.0, 0.2], [0.0, 1.0, 0.0]], atol=1e-7)
    (tmp_path / "sparse_pc.ply").write_text("ply\nnonsense\n")
    with pytest.raises(TrsplatError, match=r"sparse_pc\.ply: not a readable ply"):
        read_transforms_points(js)
    js = ngp_json(tmp_path, frames[:1], **{**top, "applied_transform": [[1, 0], [0, 1]]})
    with pytest.raises(TrsplatError, match=r"transforms\.json: applied_transform must be a finite 3x4 or 4x4"):
        read_transforms(js)


def test_repeated_frames(tmp_path: Path, capsys) -> None:
    write_png(tmp_path / "a.png", 10, 10, mode="RGB")
    write_png(tmp_path / "b.png", 10, 10, mode="RGB")
    frames = [{"file_path": "a.png", "transform_matrix": C2W_Z4},
              {"file_path": "b.png", "transform_matrix": orbit_c2w(1.0)},
              {"file_path": "./a.png", "transform_matrix": C2W_Z4}]
    views = read_transforms(ngp_json(tmp_path, frames, camera_angle_x=0.9))
    assert re.search(r"^trsplat: warning: .*transforms\.json: 1 repeated frames dropped .*a\.png",
                     capsys.readouterr().err, re.M)
    assert [v.camera.name for v in views] == ["a.png", "b.png"]
    frames[2]["transform_matrix"] = orbit_c2w(2.0)
    with pytest.raises(TrsplatError, match=r"transforms\.json: image .*a\.png appears twice"):
        read_transforms(ngp_json(tmp_path, frames, camera_angle_x=0.9))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_pose_names_file_and_frame(tmp_path: Path, bad: float) -> None:
    write_png(tmp_path / "r_7.png", 10, 10)
    m = [row[:] for row in C2W_Z4]
    m[1][3] = bad
    # json.dumps writes NaN / Infinity, which Python's json reads back
    js = write_json(tmp_path / "transforms_train.json",
                    {"camera_angle_x": 0.7, "frames": [{"file_path": "r_7", "transform_matrix": m}]})
    with pytest.raises(TrsplatError, match=r"transforms_train\.json.*r_7.*NaN or infinite"):
        read_transforms(js)


def test_nan_intrinsics_and_bad_matrix(tmp_path: Path) -> None:
    write_png(tmp_path / "r.png", 10, 10)
    js = write_json(tmp_path / "transforms_train.json",
                    {"camera_angle_x": math.nan, "frames": [{"file_path": "r", "transform_matrix": C2W_Z4}]})
    with pytest.raises(TrsplatError, match=r"transforms_train\.json.*camera_angle_x"):
        read_transforms(js)
    js = write_json(tmp_path / "transforms_train.json",
                    {"camera_angle_x": 0.7, "frames": [{"file_path": "r", "transform_matrix": [[1, 2]]}]})
    with pytest.raises(TrsplatError, match=r"transforms_train\.json.*shape"):
        read_transforms(js)


def test_invalid_json_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "transforms.json").write_text("{not json")
    with pytest.raises(TrsplatError, match=r"transforms\.json.*JSON"):
        read_transforms(tmp_path / "transforms.json")
    with pytest.raises(TrsplatError, match=r"transforms_test\.json.*not found"):
        read_transforms(tmp_path / "transforms_test.json")


def test_size_mismatch_with_declared_size(tmp_path: Path) -> None:
    write_png(tmp_path / "x.png", 30, 20, mode="RGB")
    js = ngp_json(tmp_path, [{"file_path": "x.png", "transform_matrix": C2W_Z4}], fl_x=30.0, w=32, h=20)
    (view,) = read_transforms(js)
    with pytest.raises(TrsplatError, match=r"x\.png.*30x20.*32x20"):
        load_view(view)
