"""COLMAP reader: binary and text round trips, pose convention, camera models, corrupt input."""

from __future__ import annotations

import math
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from trsplat.data.colmap import (
    colmap_views,
    find_model_dir,
    image_camera,
    pinhole_intrinsics,
    read_model,
)
from trsplat.errors import TrsplatError

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
BIRD = SHARED_DATA / "colmap_bird"

# model name -> (id, number of params), written independently of the reader's table
MODELS = {"SIMPLE_PINHOLE": (0, 3), "PINHOLE": (1, 4), "SIMPLE_RADIAL": (2, 4), "RADIAL": (3, 5),
          "OPENCV": (4, 8), "OPENCV_FISHEYE": (5, 8), "FULL_OPENCV": (6, 12), "FOV": (7, 5),
          "SIMPLE_RADIAL_FISHEYE": (8, 4), "RADIAL_FISHEYE": (9, 5), "THIN_PRISM_FISHEYE": (10, 12)}


# -- an independent COLMAP writer (binary and text) -------------------------------------------
def write_model(folder: Path, cameras, images, points, fmt: str) -> None:
    """cameras: [(id, model, w, h, params)]; images: [(id, qvec, tvec, cam_id, name)];
    points: [(id, xyz, rgb, error, track)] with track = [(image_id, point2d_idx)]."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "bin":
        with open(folder / "cameras.bin", "wb") as f:
            f.write(struct.pack("<Q", len(cameras)))
            for cid, model, w, h, params in cameras:
                f.write(struct.pack("<iiQQ", cid, MODELS[model][0] if model in MODELS else model, w, h))
                f.write(struct.pack(f"<{len(params)}d", *params))
        with open(folder / "images.bin", "wb") as f:
            f.write(struct.pack("<Q", len(images)))
            for iid, q, t, cid, name in images:
                f.write(struct.pack("<i", iid))
                f.write(struct.pack("<4d", *q))
                f.write(struct.pack("<3d", *t))
                f.write(struct.pack("<i", cid))
                f.write(name.encode() + b"\0")
                kps = [(10.5, 20.25, -1), (3.0, 4.0, 7)]
                f.write(struct.pack("<Q", len(kps)))
                for x, y, pid in kps:
                    f.write(struct.pack("<ddq", x, y, pid))
        with open(folder / "points3D.bin", "wb") as f:
            f.write(struct.pack("<Q", len(points)))
            for pid, xyz, rgb, err, track in points:
                f.write(struct.pack("<Q3d3Bd", pid, *xyz, *rgb, err))
                f.write(struct.pack("<Q", len(track)))
                for iid, idx in track:
                    f.write(struct.pack("<ii", iid, idx))
    else:
        lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
        lines += [f"{cid} {model} {w} {h} " + " ".join(repr(p) for p in params)
                  for cid, model, w, h, params in cameras]
        (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:", f"# Number of images: {len(images)}"]
        for k, (iid, q, t, cid, name) in enumerate(images):
            lines.append(f"{iid} {' '.join(repr(v) for v in q)} {' '.join(repr(v) for v in t)} {cid} {name}")
            lines.append("" if k % 2 else "10.5 20.25 -1 3.0 4.0 7")  # empty POINTS2D lines happen
        (folder / "images.txt").write_text("\n".join(lines) + "\n")
        lines = ["# 3D point list with one line of data per point:"]
        lines += [f"{pid} {' '.join(repr(v) for v in xyz)} {' '.join(str(c) for c in rgb)} {err} "
                  + " ".join(f"{i} {j}" for i, j in track) for pid, xyz, rgb, err, track in points]
        (folder / "points3D.txt").write_text("\n".join(lines) + "\n")


def quat_wxyz(rot: Rotation) -> tuple[float, float, float, float]:
    x, y, z, w = rot.as_quat()
    return (float(w), float(x), float(y), float(z))


ROTS = [Rotation.from_euler("xyz", e, degrees=True) for e in ([0, 0, 0], [10, -30, 5], [-20, 45, 170])]
TVECS = [(0.0, 0.0, 4.0), (0.5, -0.25, 3.0), (-1.0, 2.0, 6.5)]
CAMERAS = [(1, "PINHOLE", 640, 480, (500.0, 510.0, 330.5, 235.25)),
           (2, "SIMPLE_PINHOLE", 320, 200, (280.0, 161.0, 99.5))]
IMAGES = [(5, quat_wxyz(ROTS[0]), TVECS[0], 1, "c.png"),
          (2, quat_wxyz(ROTS[1]), TVECS[1], 2, "a.png"),
          (9, quat_wxyz(ROTS[2]), TVECS[2], 1, "sub dir/b 1.png")]
POINTS = [(1, (0.1, 0.2, 0.3), (255, 0, 128), 0.5, [(5, 1), (2, 1)]),
          (7, (-1.5, 2.5, 3.25), (0, 10, 20), 1.0, []),
          (3, (4.0, -5.0, 6.0), (1, 2, 3), 0.25, [(9, 0), (5, 0), (2, 0)])]


@pytest.fixture(params=["bin", "txt"])
def model_dir(request, tmp_path: Path) -> Path:
    d = tmp_path / "scene" / "sparse" / "0"
    write_model(d, CAMERAS, IMAGES, POINTS, request.param)
    return d


def test_round_trip(model_dir: Path) -> None:
    model = read_model(model_dir.parents[1])
    assert model.path == model_dir
    assert {c.camera_id: (c.model, c.width, c.height, c.params) for c in model.cameras.values()} == {
        cid: (m, w, h, p) for cid, m, w, h, p in CAMERAS}
    assert sorted(model.images) == [2, 5, 9]
    for iid, q, t, cid, name in IMAGES:
        im = model.images[iid]
        assert im.name == name and im.camera_id == cid
        np.testing.assert_allclose(im.qvec, q, rtol=0, atol=1e-15)
        np.testing.assert_allclose(im.tvec, t, rtol=0, atol=1e-15)
    assert model.xyz.dtype == np.float32 and model.xyz.shape == (3, 3)
    np.testing.assert_allclose(model.xyz, [p[1] for p in POINTS], rtol=1e-7)
    assert model.rgb.dtype == np.float32
    np.testing.assert_allclose(model.rgb, np.array([p[2] for p in POINTS]) / 255.0, rtol=1e-6)


def test_pose_convention_projects_known_point(model_dir: Path) -> None:
    model = read_model(model_dir)
    x_world = np.array([0.3, -0.2, 0.5])
    for iid, _, t, cid, _ in IMAGES:
        cam = image_camera(model, model.images[iid])
        rot = ROTS[[im[0] for im in IMAGES].index(iid)].as_matrix()
        x_cam = rot @ x_world + np.asarray(t)
        params = dict((c[0], c[4]) for c in CAMERAS)[cid]
        fx, fy, cx, cy = params if len(params) == 4 else (params[0], params[0], params[1], params[2])
        expected = (fx * x_cam[0] / x_cam[2] + cx, fy * x_cam[1] / x_cam[2] + cy)
        w2c = cam.world_to_camera.double().numpy()
        assert cam.world_to_camera.dtype.is_floating_point and cam.world_to_camera.shape == (4, 4)
        xc = w2c[:3, :3] @ x_world + w2c[:3, 3]
        got = (cam.fx * xc[0] / xc[2] + cam.cx, cam.fy * xc[1] / xc[2] + cam.cy)
        np.testing.assert_allclose(got, expected, atol=1e-3)
        # the principal point is COLMAP's, not forced to the image centre
        assert (cam.cx, cam.cy) == (cx, cy)
        np.testing.assert_allclose(cam.camera_center.numpy(), -rot.T @ np.asarray(t), atol=1e-5)


def test_views_sorted_by_name_and_missing_images(tmp_path: Path) -> None:
    d = tmp_path / "sparse"
    write_model(d, CAMERAS, IMAGES, POINTS, "bin")
    images = tmp_path / "images"
    (images / "sub dir").mkdir(parents=True)
    for name in ("a.png", "c.png"):
        (images / name).write_bytes(b"x")
    with pytest.raises(TrsplatError, match=r"1 of 3 images .* missing.*b 1\.png"):
        colmap_views(read_model(tmp_path), images)
    (images / "sub dir" / "b 1.png").write_bytes(b"x")
    views = colmap_views(read_model(tmp_path), images)
    assert [v.camera.name for v in views] == ["a.png", "c.png", "sub dir/b 1.png"]


@pytest.mark.parametrize("layout", ["sparse/0", "sparse", "."])
def test_model_folder_layouts(tmp_path: Path, layout: str) -> None:
    write_model(tmp_path / layout, CAMERAS, IMAGES, POINTS, "txt")
    assert find_model_dir(tmp_path) == (tmp_path / layout if layout != "." else tmp_path)
    assert len(read_model(tmp_path).images) == 3


@pytest.mark.parametrize(
    "model, params, expected",
    [("SIMPLE_RADIAL", (300.0, 160.0, 100.0, 0.0), (300.0, 300.0, 160.0, 100.0)),
     ("RADIAL", (300.0, 160.0, 100.0, 0.0, 0.0), (300.0, 300.0, 160.0, 100.0)),
     ("OPENCV", (300.0, 310.0, 160.0, 100.0, 0.0, 0.0, 0.0, 0.0), (300.0, 310.0, 160.0, 100.0))],
)
def test_zero_distortion_is_pinhole(tmp_path: Path, model: str, params, expected) -> None:
    write_model(tmp_path, [(1, model, 320, 200, params)], IMAGES[:1], [], "bin")
    cam = read_model(tmp_path).cameras[1]
    assert pinhole_intrinsics(cam) == expected


@pytest.mark.parametrize(
    "model, params, kind, coeffs",
    [("SIMPLE_RADIAL", (300.0, 160.0, 100.0, 0.01), "perspective", (0.01, 0, 0, 0, 0, 0, 0, 0)),
     ("RADIAL", (300.0, 160.0, 100.0, 0.01, -0.002), "perspective", (0.01, -0.002, 0, 0, 0, 0, 0, 0)),
     ("OPENCV", (300.0, 310.0, 160.0, 100.0, 0.0, 0.0, 1e-4, 0.0), "perspective", (0, 0, 1e-4, 0, 0, 0, 0, 0)),
     ("FULL_OPENCV", (300.0, 310.0, 160.0, 100.0, 0.01, 0.002, 1e-4, 2e-4, 3e-4, 0.01, 0.001, 1e-4),
      "perspective", (0.01, 0.002, 1e-4, 2e-4, 3e-4, 0.01, 0.001, 1e-4)),
     ("OPENCV_FISHEYE", (300.0, 310.0, 160.0, 100.0, 0.0, 0.0, 0.0, 0.0), "fisheye", (0, 0, 0, 0)),
     ("SIMPLE_RADIAL_FISHEYE", (300.0, 160.0, 100.0, 0.02), "fisheye", (0.02, 0, 0, 0)),
     ("RADIAL_FISHEYE", (300.0, 160.0, 100.0, 0.02, -0.01), "fisheye", (0.02, -0.01, 0, 0))],
)
@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_distorted_models_get_a_lens_and_the_undistorted_camera(tmp_path: Path, model, params, kind, coeffs,
                                                                fmt) -> None:
    write_model(tmp_path, [(1, model, 320, 200, params)], IMAGES[:1], [], fmt)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "c.png").write_bytes(b"x")
    m = read_model(tmp_path)
    (view,) = colmap_views(m, tmp_path / "images")
    lens = view.lens
    assert lens is not None and (lens.model, lens.kind, lens.coeffs) == (model, kind, coeffs)
    fx, fy, cx, cy = params[:4] if len(params) >= 8 else (params[0], params[0], params[1], params[2])
    assert (lens.width, lens.height, lens.fx, lens.fy, lens.cx, lens.cy) == (320, 200, fx, fy, cx, cy)
    cam = image_camera(m, m.images[5])
    assert (cam.width, cam.height, cam.fx, cam.fy, cam.cx, cam.cy) == (
        view.camera.width, view.camera.height, view.camera.fx, view.camera.fy, view.camera.cx, view.camera.cy)
    # COLMAP's undistorter keeps the focal lengths and scales the principal point with the size
    assert (cam.fx, cam.fy) == (fx, fy)
    assert cam.cx == pytest.approx(cx * cam.width / 320) and cam.cy == pytest.approx(cy * cam.height / 200)
    assert 0.2 * 320 <= cam.width <= 2 * 320 and 0.2 * 200 <= cam.height <= 2 * 200
    assert pinhole_intrinsics(m.cameras[1]) == (cam.fx, cam.fy, cam.cx, cam.cy)


@pytest.mark.parametrize("model, params", [("FOV", (300.0, 310.0, 160.0, 100.0, 0.9)),
                                           ("THIN_PRISM_FISHEYE", (300.0, 310.0, 160.0, 100.0) + (0.001,) * 8)])
@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_unsupported_models_refused_with_undistorter_hint(tmp_path: Path, model, params, fmt) -> None:
    write_model(tmp_path, [(1, model, 320, 200, params)], IMAGES[:1], [], fmt)
    m = read_model(tmp_path)
    with pytest.raises(TrsplatError) as info:
        image_camera(m, m.images[5])
    msg = str(info.value)
    assert f"cameras.{fmt}" in msg and model in msg
    assert "colmap image_undistorter --image_path" in msg and "--output_path" in msg


def test_repeated_image_names(tmp_path: Path, capsys) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "c.png").write_bytes(b"x")
    same = [IMAGES[0], (6,) + IMAGES[0][1:]]
    write_model(tmp_path, CAMERAS, same, [], "txt")
    views = colmap_views(read_model(tmp_path), tmp_path / "images")
    assert re.search(r"^trsplat: warning: .*images\.txt: 1 repeated frames dropped .*c\.png", capsys.readouterr().err, re.M)
    assert len(views) == 1
    other = [IMAGES[0], (6, IMAGES[0][1], (0.0, 0.0, 5.0), 1, "c.png")]
    write_model(tmp_path, CAMERAS, other, [], "txt")
    with pytest.raises(TrsplatError, match=r"images\.txt: image .*c\.png appears twice .* different cameras or poses"):
        colmap_views(read_model(tmp_path), tmp_path / "images")


def test_unknown_model_binary(tmp_path: Path) -> None:
    write_model(tmp_path, [(1, 42, 320, 200, (1.0, 2.0, 3.0))], IMAGES[:1], [], "bin")
    with pytest.raises(TrsplatError, match=r"cameras\.bin.*model id 42"):
        read_model(tmp_path)


def test_unknown_model_text(tmp_path: Path) -> None:
    write_model(tmp_path, [(1, "WEIRD_LENS", 320, 200, (1.0, 2.0, 3.0))], IMAGES[:1], [], "txt")
    with pytest.raises(TrsplatError, match=r"cameras\.txt.*WEIRD_LENS"):
        read_model(tmp_path)


@pytest.mark.parametrize("name", ["cameras.bin", "images.bin", "points3D.bin"])
def test_truncated_binary_files(tmp_path: Path, name: str) -> None:
    write_model(tmp_path, CAMERAS, IMAGES, POINTS, "bin")
    full = (tmp_path / name).read_bytes()
    for cut in sorted({0, 4, 8, 9, 20, len(full) // 3, len(full) // 2, len(full) - 1}):
        (tmp_path / name).write_bytes(full[:cut])
        with pytest.raises(TrsplatError, match=name.replace(".", r"\.")):
            read_model(tmp_path)
    (tmp_path / name).write_bytes(full + b"\0\0\0")
    with pytest.raises(TrsplatError, match=name.replace(".", r"\.") + ".*unexpected bytes"):
        read_model(tmp_path)


def test_corrupt_count_does_not_allocate(tmp_path: Path) -> None:
    write_model(tmp_path, CAMERAS, IMAGES, POINTS, "bin")
    data = bytearray((tmp_path / "points3D.bin").read_bytes())
    data[:8] = struct.pack("<Q", 2**62)
    (tmp_path / "points3D.bin").write_bytes(bytes(data))
    with pytest.raises(TrsplatError, match=r"points3D\.bin.*header says"):
        read_model(tmp_path)


def test_malformed_text_line(tmp_path: Path) -> None:
    write_model(tmp_path, CAMERAS, IMAGES, POINTS, "txt")
    with open(tmp_path / "images.txt", "a") as f:
        f.write("11 1 0 0 zero 0 0 0 1 x.png\n\n")
    with pytest.raises(TrsplatError, match=r"images\.txt:\d+"):
        read_model(tmp_path)


@pytest.mark.parametrize("fmt", ["bin", "txt"])
def test_nan_pose_names_file_and_image(tmp_path: Path, fmt: str) -> None:
    images = [IMAGES[0], (2, quat_wxyz(ROTS[1]), (0.0, math.nan, 1.0), 2, "a.png")]
    write_model(tmp_path, CAMERAS, images, POINTS, fmt)
    m = read_model(tmp_path)
    with pytest.raises(TrsplatError, match=rf"images\.{fmt}.*'a\.png'.*NaN"):
        image_camera(m, m.images[2])


def test_nan_intrinsics_and_missing_camera(tmp_path: Path) -> None:
    write_model(tmp_path, [(1, "PINHOLE", 640, 480, (math.inf, 500.0, 320.0, 240.0))],
                IMAGES[:1] + [(3, (1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 1.0), 8, "z.png")], [], "bin")
    m = read_model(tmp_path)
    with pytest.raises(TrsplatError, match=r"cameras\.bin.*camera 1"):
        image_camera(m, m.images[5])
    with pytest.raises(TrsplatError, match=r"images\.bin.*'z\.png'.*camera 8"):
        image_camera(m, m.images[3])


def test_missing_points_file_gives_empty_cloud(tmp_path: Path) -> None:
    write_model(tmp_path, CAMERAS, IMAGES, [], "bin")
    (tmp_path / "points3D.bin").unlink()
    m = read_model(tmp_path)
    assert m.points_file is None and m.xyz.shape == (0, 3)


def test_no_model_found(tmp_path: Path) -> None:
    with pytest.raises(TrsplatError, match="sparse/0/cameras"):
        read_model(tmp_path)


@pytest.mark.skipif(not BIRD.is_dir(), reason="shared data not available")
def test_real_bird_model_projects_points_into_images() -> None:
    model = read_model(BIRD)
    assert len(model.cameras) == 184 and len(model.images) == 184
    assert {c.model for c in model.cameras.values()} == {"SIMPLE_PINHOLE"}
    assert model.xyz.shape == (6271, 3) and model.rgb.min() >= 0 and model.rgb.max() <= 1
    views = colmap_views(model, BIRD / "images")
    for view in views[::37]:
        cam = view.camera
        w2c = cam.world_to_camera.double().numpy()
        xc = model.xyz.astype(np.float64) @ w2c[:3, :3].T + w2c[:3, 3]
        front = xc[:, 2] > 0
        u = cam.fx * xc[front, 0] / xc[front, 2] + cam.cx
        v = cam.fy * xc[front, 1] / xc[front, 2] + cam.cy
        inside = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
        assert front.mean() > 0.9 and inside.mean() > 0.9, (cam.name, front.mean(), inside.mean())
