"""Scene loading: format detection, splits, downscaling, image checks, initialisation, real data."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from trsplat.camera import look_at
from trsplat.data import Scene, detect_format, init_gaussians, load_scene, random_init_box
from trsplat.errors import TrsplatError

SHARED_DATA = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data").resolve()
BIRD = SHARED_DATA / "colmap_bird"
CHAIR = SHARED_DATA / "nerf_synthetic_chair"


def ring_w2c(n: int, radius: float = 4.0, target=(0.0, 0.0, 0.0)) -> list[torch.Tensor]:
    """world->camera (OpenCV) of n cameras on a horizontal ring around ``target``, looking at it."""
    t = torch.tensor(target, dtype=torch.float64)
    out = []
    for i in range(n):
        a = 2 * math.pi * i / n
        eye = t + torch.tensor([radius * math.cos(a), radius * math.sin(a), 0.3 * radius], dtype=torch.float64)
        out.append(look_at(eye, t, torch.tensor([0.0, 0.0, 1.0])))
    return out


def write_colmap_text(root: Path, n: int = 10, size=(20, 12), points: int = 50,
                      nan_image: int | None = None) -> list[torch.Tensor]:
    """A COLMAP text model in root/sparse/0 with n PINHOLE images img_XX.png in root/images.

    Image ids are assigned in reverse name order so that name sorting is exercised."""
    w, h = size
    model = root / "sparse" / "0"
    model.mkdir(parents=True)
    (root / "images").mkdir()
    (model / "cameras.txt").write_text(f"1 PINHOLE {w} {h} {0.9 * w} {0.9 * w} {w / 2 + 0.25} {h / 2 - 0.5}\n")
    poses = ring_w2c(n)
    lines = []
    rng = np.random.default_rng(0)
    for i, w2c in enumerate(poses):
        x, y, z, qw = Rotation.from_matrix(w2c[:3, :3].double().numpy()).as_quat()
        t = w2c[:3, 3].double().numpy()
        if i == nan_image:
            t = [math.nan, 0.0, 0.0]
        lines.append(f"{n - i} {qw} {x} {y} {z} {t[0]} {t[1]} {t[2]} 1 img_{i:02d}.png")
        lines.append("")
        pix = rng.integers(0, 255, size=(h, w, 3), dtype=np.uint8)
        Image.fromarray(pix).save(root / "images" / f"img_{i:02d}.png")
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    pts = rng.uniform(-1, 1, size=(points, 3))
    (model / "points3D.txt").write_text(
        "".join(f"{k + 1} {p[0]} {p[1]} {p[2]} 10 20 30 0.5 1 0\n" for k, p in enumerate(pts)))
    return poses


@pytest.fixture
def colmap_scene(tmp_path: Path) -> Path:
    write_colmap_text(tmp_path)
    return tmp_path


# -- COLMAP scenes ------------------------------------------------------------------------------
def test_colmap_scene_split_points_and_extent(colmap_scene: Path) -> None:
    scene = load_scene(colmap_scene)
    assert isinstance(scene, Scene) and scene.name == colmap_scene.name
    assert [f.camera.name for f in scene.test] == ["img_00.png", "img_08.png"]
    assert [f.camera.name for f in scene.train] == [f"img_{i:02d}.png" for i in range(10) if i % 8]
    for f in scene.train + scene.test:
        assert f.image.shape == (12, 20, 3) and f.image.dtype == torch.float32
        assert (f.camera.width, f.camera.height) == (20, 12)
        assert f.camera.cx == 10.25 and f.camera.cy == 5.5  # COLMAP's principal point kept
    # pixels are exactly what was written
    written = np.asarray(Image.open(colmap_scene / "images" / "img_01.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(scene.train[0].image.numpy(), written, atol=1e-7)
    assert scene.points is not None and scene.points.shape == (50, 3)
    assert scene.points.dtype == torch.float32
    np.testing.assert_allclose(scene.point_colors[0].numpy(), [10 / 255, 20 / 255, 30 / 255], atol=1e-7)
    centers = torch.stack([f.camera.camera_center for f in scene.train]).double()
    expected = 1.1 * float((centers - centers.mean(0)).norm(dim=1).max())
    assert scene.extent == pytest.approx(expected, rel=1e-5)
    assert scene.background == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("k, size", [(2, (10, 6)), (3, (7, 4)), (1.5, (13, 8)), (4.0, (5, 3))])
def test_downscale_matches_camera_exactly(colmap_scene: Path, k, size) -> None:
    scene = load_scene(colmap_scene, downscale=k)
    for f in scene.train + scene.test:
        assert (f.camera.width, f.camera.height) == size
        assert f.image.shape == (size[1], size[0], 3)
        assert f.camera.fx == pytest.approx(0.9 * 20 * size[0] / 20)
        assert f.camera.cx == pytest.approx(10.25 * size[0] / 20)
    assert float(scene.train[0].image.min()) >= 0 and float(scene.train[0].image.max()) <= 1


def test_downscale_two_is_block_average(tmp_path: Path) -> None:
    write_colmap_text(tmp_path, n=2, size=(8, 6))
    full = load_scene(tmp_path, llffhold=0).train[0].image
    half = load_scene(tmp_path, llffhold=0, downscale=2).train[0].image
    blocks = full.reshape(3, 2, 4, 2, 3).mean(dim=(1, 3))
    np.testing.assert_allclose(half.numpy(), blocks.numpy(), atol=1e-6)


def test_llffhold_and_max_test_views(colmap_scene: Path) -> None:
    scene = load_scene(colmap_scene, llffhold=2, max_test_views=3)
    assert [f.camera.name for f in scene.test] == ["img_00.png", "img_04.png", "img_08.png"]
    assert len(scene.train) == 5
    assert load_scene(colmap_scene, llffhold=2, max_test_views=0).test == []
    scene = load_scene(colmap_scene, llffhold=0)
    assert len(scene.train) == 10 and scene.test == []
    with pytest.raises(TrsplatError, match="train split is empty"):
        load_scene(colmap_scene, llffhold=1)


def test_bad_options(colmap_scene: Path) -> None:
    with pytest.raises(TrsplatError, match="--downscale"):
        load_scene(colmap_scene, downscale=0.5)
    with pytest.raises(TrsplatError, match="--background"):
        load_scene(colmap_scene, background="pink")
    with pytest.raises(TrsplatError, match="--llffhold"):
        load_scene(colmap_scene, llffhold=-1)


def test_corrupt_image_names_file(colmap_scene: Path) -> None:
    bad = colmap_scene / "images" / "img_03.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated PNG
    with pytest.raises(TrsplatError, match=r"img_03\.png"):
        load_scene(colmap_scene)
    bad.write_bytes(b"this is not an image at all")
    with pytest.raises(TrsplatError, match=r"img_03\.png"):
        load_scene(colmap_scene)


def test_size_mismatch_names_file_and_sizes(colmap_scene: Path) -> None:
    Image.new("RGB", (24, 12)).save(colmap_scene / "images" / "img_05.png")
    with pytest.raises(TrsplatError, match=r"img_05\.png: image is 24x12 .* is 20x12"):
        load_scene(colmap_scene, downscale=2)


def test_grayscale_and_rgba_images(colmap_scene: Path) -> None:
    Image.new("L", (20, 12), 51).save(colmap_scene / "images" / "img_01.png")
    Image.new("RGBA", (20, 12), (255, 0, 0, 0)).save(colmap_scene / "images" / "img_02.png")
    scene = load_scene(colmap_scene, background="black")
    np.testing.assert_allclose(scene.train[0].image.numpy(), 0.2, atol=1e-6)
    np.testing.assert_allclose(scene.train[1].image.numpy(), 0.0, atol=1e-6)
    assert scene.background == (0.0, 0.0, 0.0)


def test_nan_pose_names_file_and_image(tmp_path: Path) -> None:
    write_colmap_text(tmp_path, nan_image=4)
    with pytest.raises(TrsplatError, match=r"images\.txt.*img_04\.png.*NaN"):
        load_scene(tmp_path)


def test_missing_image_file(colmap_scene: Path) -> None:
    (colmap_scene / "images" / "img_06.png").unlink()
    with pytest.raises(TrsplatError, match=r"img_06\.png"):
        load_scene(colmap_scene)


def test_unrecognised_folder_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(TrsplatError, match=r"sparse/0/cameras.*transforms_train\.json.*transforms\.json"):
        load_scene(tmp_path)
    with pytest.raises(TrsplatError, match="no such file"):
        load_scene(tmp_path / "nope")


# -- initialisation -------------------------------------------------------------------------------
def test_init_sfm_and_empty_point_cloud(colmap_scene: Path) -> None:
    scene = load_scene(colmap_scene)
    g = init_gaussians(scene)
    assert len(g) == 50
    torch.testing.assert_close(g.means, scene.points)
    (colmap_scene / "sparse" / "0" / "points3D.txt").write_text("# no points\n")
    empty = load_scene(colmap_scene)
    assert empty.points is not None and empty.points.shape == (0, 3)
    with pytest.raises(TrsplatError, match=r"points3D\.txt has no points; use --init random"):
        init_gaussians(empty)
    with pytest.raises(TrsplatError, match="no points"):
        init_gaussians(empty, init="sfm")
    g = init_gaussians(empty, init="random", n_random=1000)
    assert len(g) == 1000
    with pytest.raises(TrsplatError, match="--init"):
        init_gaussians(empty, init="banana")


def test_random_init_box_finds_look_at_point() -> None:
    from trsplat.camera import Camera

    target = (1.0, 2.0, -3.0)
    cams = [Camera(10, 10, 10.0, 10.0, 5.0, 5.0, w2c, f"c{i}")
            for i, w2c in enumerate(ring_w2c(12, radius=4.0, target=target))]
    center, half = random_init_box(cams)
    np.testing.assert_allclose(center.numpy(), target, atol=1e-4)
    assert half == pytest.approx(math.hypot(4.0, 1.2) / 3, rel=1e-4)
    assert random_init_box(cams, half_width=0.5)[1] == 0.5
    # parallel optical axes: falls back to the mean camera centre
    par = [Camera(10, 10, 10.0, 10.0, 5.0, 5.0,
                  look_at(torch.tensor([float(i), 0.0, 0.0]), torch.tensor([float(i), 0.0, 5.0]),
                          torch.tensor([0.0, -1.0, 0.0])))
           for i in range(4)]
    center, half = random_init_box(par)
    np.testing.assert_allclose(center.numpy(), [1.5, 0.0, 0.0], atol=1e-6)


def test_random_init_is_deterministic_and_in_box(colmap_scene: Path) -> None:
    scene = load_scene(colmap_scene)
    scene.points, scene.point_colors = None, None  # as for a random-init dataset
    a = init_gaussians(scene, n_random=2000, seed=3)
    b = init_gaussians(scene, n_random=2000, seed=3)
    c = init_gaussians(scene, n_random=2000, seed=4)
    assert len(a) == 2000
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.sh_dc, b.sh_dc)
    assert not torch.equal(a.means, c.means)
    center, half = random_init_box(scene.train_cameras)
    assert float((a.means - center).abs().max()) <= half + 1e-5
    g = init_gaussians(scene, n_random=500, init_box=0.25)
    assert float((g.means - center).abs().max()) <= 0.25 + 1e-5


# -- transforms scenes ----------------------------------------------------------------------------
def _blender_c2w(w2c: torch.Tensor) -> list[list[float]]:
    c2w = torch.linalg.inv(w2c.double())
    c2w[:3, 1:3] *= -1
    return c2w.tolist()


def test_blender_scene_uses_its_test_split(tmp_path: Path) -> None:
    poses = ring_w2c(6)
    for split, idx in (("train", range(4)), ("test", range(4, 6))):
        frames = []
        for i in idx:
            (tmp_path / split).mkdir(exist_ok=True)
            Image.new("RGBA", (16, 16), (0, 255, 0, 255 if i % 2 else 0)).save(tmp_path / split / f"r_{i}.png")
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": _blender_c2w(poses[i])})
        (tmp_path / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.69, "frames": frames}))
    (tmp_path / "transforms_val.json").write_text("garbage: never read")
    assert detect_format(tmp_path) == ("blender", tmp_path)
    scene = load_scene(tmp_path, downscale=2, background="black")
    assert len(scene.train) == 4 and len(scene.test) == 2
    assert scene.points is None and scene.point_colors is None
    assert scene.train[0].image.shape == (8, 8, 3)
    for got, w2c in zip([f.camera for f in scene.train + scene.test], poses):
        torch.testing.assert_close(got.world_to_camera, w2c, atol=1e-5, rtol=0)
    np.testing.assert_allclose(scene.train[0].image.numpy(), 0.0)  # alpha 0 on black
    np.testing.assert_allclose(scene.train[1].image[0, 0].numpy(), [0.0, 1.0, 0.0])
    g = init_gaussians(scene, n_random=300)
    assert len(g) == 300


def test_ngp_scene_llffhold_by_name(tmp_path: Path) -> None:
    poses = ring_w2c(9)
    frames = []
    for i in reversed(range(9)):
        Image.new("RGB", (12, 10), (i, i, i)).save(tmp_path / f"f{i}.jpg")
        frames.append({"file_path": f"f{i}.jpg", "transform_matrix": _blender_c2w(poses[i])})
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 10.0, "w": 12, "h": 10, "frames": frames}))
    scene = load_scene(tmp_path)
    assert [f.camera.name for f in scene.test] == ["f0.jpg", "f8.jpg"]
    assert len(scene.train) == 7 and scene.points is None
    assert load_scene(tmp_path / "transforms.json").test[1].camera.name == "f8.jpg"


# -- real data --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bird() -> Scene:
    if not BIRD.is_dir():
        pytest.skip("shared data not available")
    return load_scene(BIRD, downscale=4)


@pytest.fixture(scope="module")
def chair() -> Scene:
    if not CHAIR.is_dir():
        pytest.skip("shared data not available")
    return load_scene(CHAIR, downscale=8)


def test_real_bird(bird: Scene) -> None:
    assert len(bird.train) + len(bird.test) == 184
    assert (len(bird.train), len(bird.test)) == (161, 23)
    assert bird.points is not None and bird.points.shape == (6271, 3)
    assert bird.point_colors is not None and bird.point_colors.shape == (6271, 3)
    for f in bird.train + bird.test:
        assert (f.camera.width, f.camera.height) == (136, 240)
        assert f.image.shape == (240, 136, 3)
    assert bird.extent > 0
    assert len(init_gaussians(bird)) == 6271


def test_real_bird_points_project_inside_images(bird: Scene) -> None:
    pts = bird.points.double()
    for f in (bird.train[0], bird.train[80], bird.test[5]):
        cam = f.camera
        w2c = cam.world_to_camera.double()
        xc = pts @ w2c[:3, :3].T + w2c[:3, 3]
        front = xc[:, 2] > 0
        u = cam.fx * xc[front, 0] / xc[front, 2] + cam.cx
        v = cam.fy * xc[front, 1] / xc[front, 2] + cam.cy
        inside = ((u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)).double().mean()
        assert float(front.double().mean()) > 0.9 and float(inside) > 0.9, cam.name


def test_real_chair(chair: Scene) -> None:
    assert (len(chair.train), len(chair.test)) == (100, 200)
    assert chair.points is None and chair.point_colors is None
    for f in chair.train + chair.test:
        assert f.image.shape == (100, 100, 3) and (f.camera.width, f.camera.height) == (100, 100)
    assert chair.train[0].camera.fx == pytest.approx(0.5 * 800 / math.tan(0.6911112070083618 / 2) / 8)
    center, half = random_init_box(chair.train_cameras)
    assert float(center.norm()) < 0.05 and half == pytest.approx(4.03 / 3, rel=0.02)
    centers = torch.stack([f.camera.camera_center for f in chair.train]).double()
    radius = float((centers - centers.mean(0)).norm(dim=1).max())
    assert chair.extent == pytest.approx(1.1 * radius, rel=1e-5)
    assert 4.0 < radius < 2 * 4.03
    # white background: the corners of a NeRF-synthetic render are empty
    assert float(chair.train[0].image[0, 0].min()) > 0.99


# -- images as users have them ----------------------------------------------------------------------
def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_exif_orientation_applied_only_when_the_camera_needs_it(colmap_scene: Path, orientation: int) -> None:
    from PIL import ImageOps

    rng = np.random.default_rng(orientation)
    images = colmap_scene / "images"
    # stored 12x20 (portrait) with a tag that rotates it to the camera's 20x12
    stored = Image.fromarray(rng.integers(0, 255, size=(20, 12, 3), dtype=np.uint8))
    stored.save(images / "img_01.png", exif=_exif(orientation))
    # stored 20x12 like its camera, with a tag: the stored pixels are used, as COLMAP does
    same = Image.fromarray(rng.integers(0, 255, size=(12, 20, 3), dtype=np.uint8))
    same.save(images / "img_02.png", exif=_exif(orientation))
    scene = load_scene(colmap_scene)
    oriented = np.asarray(ImageOps.exif_transpose(Image.open(images / "img_01.png")), dtype=np.float32) / 255
    assert oriented.shape == (12, 20, 3)
    np.testing.assert_array_equal(scene.train[0].image.numpy(), oriented)
    np.testing.assert_array_equal(scene.train[1].image.numpy(), np.asarray(same, dtype=np.float32) / 255)
    # the same pixels without the tag do not fit the camera
    stored.save(images / "img_01.png")
    with pytest.raises(TrsplatError, match=r"img_01\.png: image is 12x20 pixels but its camera 'img_01\.png' is 20x12"):
        load_scene(colmap_scene)


def test_transpose_array_matches_pil() -> None:
    from trsplat.data.images import _SWAPPING, _transpose_array

    arr = np.random.default_rng(0).integers(0, 255, size=(5, 7, 3), dtype=np.uint8)
    for op in _SWAPPING.values():
        expected = np.asarray(Image.fromarray(arr).transpose(op))
        np.testing.assert_array_equal(_transpose_array(arr, op), expected)


def test_sixteen_bit_colour_keeps_its_bits_and_warns(colmap_scene: Path, capsys) -> None:
    import cv2

    rng = np.random.default_rng(3)
    rgb16 = rng.integers(0, 65535, size=(12, 20, 3), dtype=np.uint16)
    assert cv2.imwrite(str(colmap_scene / "images" / "img_01.png"), rgb16[:, :, ::-1])
    rgba16 = np.concatenate([rgb16, np.full((12, 20, 1), 65535, np.uint16)], axis=2)
    rgba16[:6, :, 3] = 0
    assert cv2.imwrite(str(colmap_scene / "images" / "img_02.png"), rgba16[:, :, [2, 1, 0, 3]])
    scene = load_scene(colmap_scene, background="white")
    assert re.search(r"^trsplat: warning: .*img_01\.png: 2 of 10 images are 16-bit", capsys.readouterr().err, re.M)
    np.testing.assert_allclose(scene.train[0].image.numpy(), rgb16 / 65535, rtol=0, atol=1e-7)
    img = scene.train[1].image.numpy()
    np.testing.assert_allclose(img[:6], 1.0, atol=1e-7)  # alpha 0 on white, in float
    np.testing.assert_allclose(img[6:], rgb16[6:] / 65535, rtol=0, atol=1e-7)
    # downscaled by 2: the 2x2 block means of the 16-bit values (8 bits would be off by up to 1/510)
    half = load_scene(colmap_scene, background="white", downscale=2).train[0].image.numpy()
    blocks = (rgb16 / 65535).reshape(6, 2, 10, 2, 3).mean(axis=(1, 3))
    np.testing.assert_allclose(half, blocks, rtol=0, atol=1e-6)


def test_greyscale_warns_once_with_a_count(colmap_scene: Path, capsys) -> None:
    for i in (3, 5):
        Image.new("L", (20, 12), 40 * i).save(colmap_scene / "images" / f"img_{i:02d}.png")
    load_scene(colmap_scene)
    err = capsys.readouterr().err
    assert re.search(r"^trsplat: warning: .*img_03\.png: 2 of 10 images are greyscale", err, re.M)
    assert err.count("images are greyscale") == 1


@pytest.mark.parametrize("suffix, hint", [(".exr", "HDR"), (".heic", "HEIC"), (".png", "corrupt or unreadable")])
def test_unusable_image_formats_say_what_to_do(tmp_path: Path, suffix: str, hint: str) -> None:
    from trsplat.data import load_image

    path = tmp_path / f"photo{suffix}"
    path.write_bytes(b"\x00\x01 not an image a decoder can read")
    with pytest.raises(TrsplatError, match=rf"photo\{suffix}: .*{hint}"):
        load_image(path)


def test_single_training_view_warns(tmp_path: Path, capsys) -> None:
    write_colmap_text(tmp_path, n=2)
    scene = load_scene(tmp_path, llffhold=2)
    assert re.search(r"^trsplat: warning: .*only 1 training view \(img_01\.png\)", capsys.readouterr().err, re.M)
    assert len(scene.train) == 1


def test_downscale_to_a_few_pixels(colmap_scene: Path, capsys) -> None:
    load_scene(colmap_scene, downscale=3)
    assert re.search(r"^trsplat: warning: .*--downscale 3 leaves 10 of 10 images under 32 pixels on a side "
                     r"\(smallest 7x4 pixels \(from 20x12\)\)", capsys.readouterr().err, re.M)
    with pytest.raises(TrsplatError, match=r"img_\d\d\.png: --downscale 9 leaves an image of 2x1 pixels"):
        load_scene(colmap_scene, downscale=9)


def test_differently_sized_images_in_one_capture(tmp_path: Path) -> None:
    # COLMAP: one camera per size
    write_colmap_text(tmp_path, n=4, size=(20, 12))
    model = tmp_path / "sparse" / "0"
    (model / "cameras.txt").write_text("1 PINHOLE 20 12 18 18 10 6\n2 SIMPLE_PINHOLE 16 24 20 8 12\n")
    lines = (model / "images.txt").read_text().splitlines()
    lines[2] = lines[2].rsplit(" ", 2)[0] + " 2 img_01.png"
    (model / "images.txt").write_text("\n".join(lines) + "\n")
    Image.new("RGB", (16, 24), (9, 9, 9)).save(tmp_path / "images" / "img_01.png")
    scene = load_scene(tmp_path, llffhold=0, downscale=2)
    sizes = [(f.camera.width, f.camera.height, tuple(f.image.shape)) for f in scene.train]
    assert sizes == [(10, 6, (6, 10, 3)), (8, 12, (12, 8, 3)), (10, 6, (6, 10, 3)), (10, 6, (6, 10, 3))]
    # transforms.json without w, h: each frame takes its image's size
    ngp = tmp_path / "ngp"
    ngp.mkdir()
    poses = ring_w2c(3)
    frames = []
    for i, size in enumerate([(12, 10), (10, 12), (16, 8)]):
        Image.new("RGB", size, (i, i, i)).save(ngp / f"f{i}.png")
        frames.append({"file_path": f"f{i}.png", "transform_matrix": _blender_c2w(poses[i])})
    (ngp / "transforms.json").write_text(json.dumps({"camera_angle_x": 0.8, "frames": frames}))
    scene = load_scene(ngp, llffhold=0)
    assert [(f.camera.width, f.camera.height) for f in scene.train] == [(12, 10), (10, 12), (16, 8)]
    assert [f.camera.cx for f in scene.train] == [6.0, 5.0, 8.0]


def test_nerfstudio_capture_starts_from_its_point_cloud(tmp_path: Path) -> None:
    from plyfile import PlyData, PlyElement

    poses = ring_w2c(4)
    frames = []
    for i in range(4):
        Image.new("RGB", (16, 12), (10 * i, 0, 0)).save(tmp_path / f"frame_{i:05d}.jpg")
        frames.append({"file_path": f"frame_{i:05d}.jpg", "transform_matrix": _blender_c2w(poses[i]),
                       "fl_x": 14.0, "fl_y": 14.0, "cx": 8.0, "cy": 6.0, "w": 16, "h": 12})
    pts = np.array([(0.1 * k, -0.1 * k, 0.05 * k, 10, 20, 30) for k in range(25)],
                   dtype=[("x", "f4"), ("y", "f4"), ("z", "f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    PlyData([PlyElement.describe(pts, "vertex")], text=True).write(str(tmp_path / "sparse_pc.ply"))
    (tmp_path / "transforms.json").write_text(json.dumps({
        "camera_model": "OPENCV", "k1": 0.0, "k2": 0.0, "p1": 0.0, "p2": 0.0, "frames": frames,
        "applied_transform": [[1, 0, 0, 0], [0, 0, 1, 0], [0, -1, 0, 0]], "ply_file_path": "sparse_pc.ply"}))
    assert detect_format(tmp_path) == ("ngp", tmp_path / "transforms.json")
    scene = load_scene(tmp_path, llffhold=0)
    assert scene.points is not None and scene.points.shape == (25, 3)
    assert scene.points_file == tmp_path / "sparse_pc.ply"
    np.testing.assert_allclose(scene.point_colors[3].numpy(), [10 / 255, 20 / 255, 30 / 255], atol=1e-7)
    assert len(init_gaussians(scene)) == 25
