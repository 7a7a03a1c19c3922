"""Scenes: detect the dataset format, split train/test, load images, initialise Gaussians.

Formats, detected in this order from the folder given:

1. **COLMAP**: ``sparse/0/cameras.bin|txt``, ``sparse/cameras.bin|txt`` or ``cameras.bin|txt``;
   images in ``images/`` (see :func:`trsplat.data.colmap.find_images_dir`). No test split of its
   own: every ``llffhold``-th image (sorted by name, ``index % llffhold == 0``) is a test view,
   as in 3DGS.
2. **NeRF-synthetic / Blender**: ``transforms_train.json`` (+ ``transforms_test.json`` as the test
   split; if that file is absent the llffhold rule is applied to the train frames).
   ``transforms_val.json`` is never used. No point cloud (random init).
3. **instant-ngp or nerfstudio** (format name ``"ngp"``): ``transforms.json`` (a path to a
   ``.json`` file is also accepted); llffhold split by image name. The point cloud is
   nerfstudio's ``ply_file_path`` if the file names one, else none (random init).

Distorted cameras (see :mod:`trsplat.data.undistort`) are undistorted on load, through a cache
in the capture folder (:mod:`trsplat.data.cache`). A capture with a single training view loads
with a warning; the other checks are the readers' and :func:`trsplat.data.images.load_views`'s
(docs/captures.md lists them).

``llffhold = 0`` disables the hold-out (every view trains, the test list is empty).
``max_test_views = m`` keeps ``m`` evenly spaced test views: indices
``round(linspace(0, n - 1, m))`` of the ``n`` test views (the first and last are always kept);
only those images are decoded.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence, TypeVar

import numpy as np
import torch

from trsplat.camera import Camera
from trsplat.data.cache import UndistortCache
from trsplat.data.colmap import colmap_views, find_images_dir, find_model_dir, read_model
from trsplat.data.images import ImageView, check_downscale, load_views, parse_background
from trsplat.data.transforms import read_transforms, read_transforms_points
from trsplat.errors import TrsplatError, warn
from trsplat.gaussians import Gaussians, init_from_points

T = TypeVar("T")
SceneFormat = Literal["colmap", "blender", "ngp"]


@dataclass
class Frame:
    """One view: its camera and its image, already composited and downscaled.

    ``image`` is float32 (camera.height, camera.width, 3) in [0, 1].
    """

    camera: Camera
    image: torch.Tensor


@dataclass
class Scene:
    """A loaded dataset.

    Attributes:
        name: the dataset folder's name.
        source: the folder (or JSON file) it was loaded from.
        train, test: the frames of each split.
        points: (P, 3) float32 SfM points (P may be 0 for a COLMAP model without points), or
            None for datasets that have no point cloud (Blender, a transforms.json without
            nerfstudio's ply_file_path).
        point_colors: (P, 3) float32 in [0, 1], or None with ``points``.
        extent: 3DGS "cameras_extent": 1.1 x the largest distance of a train camera centre from
            the mean train camera centre (world units); 1.0 if that is 0 (a single camera).
        background: RGB in [0, 1] that alpha was composited on (and the render background).
        points_file: the file the points came from (for messages), or None.
    """

    name: str
    source: Path
    train: list[Frame]
    test: list[Frame]
    points: torch.Tensor | None
    point_colors: torch.Tensor | None
    extent: float
    background: tuple[float, float, float]
    points_file: Path | None = None

    @property
    def train_cameras(self) -> list[Camera]:
        return [f.camera for f in self.train]

    @property
    def test_cameras(self) -> list[Camera]:
        return [f.camera for f in self.test]


# -- format detection and splitting -----------------------------------------------------------
def detect_format(path: str | os.PathLike) -> tuple[SceneFormat, Path]:
    """(format, location): the COLMAP model folder, the Blender scene folder or the ngp JSON."""
    path = Path(path).expanduser()
    if path.is_file() and path.suffix.lower() == ".json":
        if path.name == "transforms_train.json":
            return "blender", path.parent
        return "ngp", path
    if not path.exists():
        raise TrsplatError(f"{path}: no such file or folder")
    if not path.is_dir():
        raise TrsplatError(f"{path}: expected a dataset folder (COLMAP, Blender or instant-ngp)")
    model_dir = find_model_dir(path)
    if model_dir is not None:
        return "colmap", model_dir
    if (path / "transforms_train.json").is_file():
        return "blender", path
    if (path / "transforms.json").is_file():
        return "ngp", path / "transforms.json"
    raise TrsplatError(
        f"{path}: not a recognised dataset; looked for a COLMAP model (sparse/0/cameras.bin|txt, "
        f"sparse/cameras.bin|txt, cameras.bin|txt), a NeRF-synthetic transforms_train.json and "
        f"an instant-ngp transforms.json"
    )


def split_llffhold(items: Sequence[T], llffhold: int) -> tuple[list[T], list[T]]:
    """(train, test): item i is a test item iff ``llffhold > 0 and i % llffhold == 0`` (3DGS)."""
    if llffhold <= 0:
        return list(items), []
    train = [x for i, x in enumerate(items) if i % llffhold != 0]
    test = [x for i, x in enumerate(items) if i % llffhold == 0]
    return train, test


def evenly_spaced(items: Sequence[T], count: int | None) -> list[T]:
    """``count`` items at indices ``round(linspace(0, n - 1, count))`` (all if count is None or >= n)."""
    n = len(items)
    if count is None or count >= n:
        return list(items)
    if count <= 0:
        return []
    idx = np.unique(np.round(np.linspace(0, n - 1, count)).astype(int))
    return [items[i] for i in idx]


def cameras_extent(cameras: Sequence[Camera]) -> float:
    """3DGS ``getNerfppNorm`` radius: 1.1 x max distance of the centres from their mean."""
    if not cameras:
        raise TrsplatError("cannot compute the scene extent without cameras")
    centers = torch.stack([c.camera_center.double() for c in cameras])
    radius = float((centers - centers.mean(dim=0)).norm(dim=1).max()) * 1.1
    return radius if radius > 0 and math.isfinite(radius) else 1.0


# -- loading ----------------------------------------------------------------------------------
def load_scene(
    path: str | os.PathLike,
    *,
    downscale: float = 1.0,
    background: str | Sequence[float] = "white",
    llffhold: int = 8,
    max_test_views: int | None = None,
    workers: int | None = None,
) -> Scene:
    """Load a COLMAP, NeRF-synthetic or instant-ngp dataset (see the module docstring).

    Args:
        path: dataset folder (or an instant-ngp ``transforms.json``).
        downscale: K >= 1; images are resized to ``round(W / K) x round(H / K)`` on load and
            cameras are ``camera.scaled(1 / K)``.
        background: ``"white"`` or ``"black"`` (or an RGB triple), for compositing RGBA images.
        llffhold: hold out every ``llffhold``-th view as test for datasets without a test split.
        max_test_views: keep at most this many evenly spaced test views.
        workers: image-decoding threads (default min(8, cpu count)).
    """
    downscale = check_downscale(downscale)
    bg = parse_background(background)
    if int(llffhold) != llffhold or llffhold < 0:
        raise TrsplatError(f"--llffhold {llffhold!r}: expected an integer >= 0 (0 = no test split)")
    if max_test_views is not None and max_test_views < 0:
        raise TrsplatError(f"--max-test-views {max_test_views!r}: expected an integer >= 0")

    source = Path(path).expanduser()
    fmt, location = detect_format(source)
    points: torch.Tensor | None = None
    colors: torch.Tensor | None = None
    points_file: Path | None = None
    train_v: list[ImageView]
    test_v: list[ImageView]
    if fmt == "colmap":
        model = read_model(location)
        images_dir = find_images_dir(source, location)
        views = colmap_views(model, images_dir)
        train_v, test_v = split_llffhold(views, int(llffhold))
        points = torch.from_numpy(np.ascontiguousarray(model.xyz, dtype=np.float32))
        colors = torch.from_numpy(np.ascontiguousarray(model.rgb, dtype=np.float32))
        points_file = model.points_file or (location / "points3D.bin")
        where = str(model.images_file)
    elif fmt == "blender":
        train_json = location / "transforms_train.json"
        test_json = location / "transforms_test.json"
        train_v = read_transforms(train_json)
        if test_json.is_file():
            test_v = read_transforms(test_json)
        else:
            train_v, test_v = split_llffhold(train_v, int(llffhold))
        where = str(train_json)
    else:
        views = sorted(read_transforms(location), key=lambda v: v.camera.name)
        train_v, test_v = split_llffhold(views, int(llffhold))
        where = str(location)
        cloud = read_transforms_points(location)
        if cloud is not None:
            points = torch.from_numpy(np.ascontiguousarray(cloud[0], dtype=np.float32))
            colors = torch.from_numpy(np.ascontiguousarray(cloud[1], dtype=np.float32))
            points_file = cloud[2]
    if not train_v:
        raise TrsplatError(f"{where}: the train split is empty (llffhold={llffhold})")
    if len(train_v) == 1:
        warn(f"{where}: only 1 training view ({train_v[0].camera.name}); a 3D model needs several "
             f"views of the scene (llffhold={llffhold})")
    test_v = evenly_spaced(test_v, max_test_views)

    scene_dir = source if source.is_dir() else source.parent
    cache = UndistortCache(location.parent if fmt == "ngp" else scene_dir)
    loaded = load_views(train_v + test_v, downscale=downscale, background=bg, workers=workers,
                        cache=cache)
    frames = [Frame(cam, img) for cam, img in loaded]
    train, test = frames[: len(train_v)], frames[len(train_v):]
    return Scene(
        name=scene_dir.resolve().name,
        source=source,
        train=train,
        test=test,
        points=points,
        point_colors=colors,
        extent=cameras_extent([f.camera for f in train]),
        background=bg,
        points_file=points_file,
    )


# -- initialisation ---------------------------------------------------------------------------
def random_init_box(
    cameras: Sequence[Camera], half_width: float | None = None
) -> tuple[torch.Tensor, float]:
    """(center (3,) float32, half_width) of the cube used for random initialisation.

    The centre is the point the cameras look at: the least-squares closest point to all optical
    axes, ``argmin_p sum_i |(I - d_i d_i^T)(p - c_i)|^2`` (c_i centre, d_i viewing direction).
    It falls back to the mean of the camera centres when the axes are (nearly) parallel
    (smallest/largest eigenvalue of the normal matrix < 1e-6) or when the point is behind more
    than half of the cameras. ``half_width`` defaults to 1/3 of the mean distance of the camera
    centres from the centre (1.0 if that is 0); for NeRF-synthetic (cameras at radius ~4.03)
    this gives ~1.34, close to 3DGS's fixed +-1.3 box.
    """
    if not cameras:
        raise TrsplatError("cannot place a random initialisation box without cameras")
    centers = torch.stack([c.camera_center.double() for c in cameras]).numpy()
    dirs = np.stack([c.world_to_camera.double()[2, :3].numpy() for c in cameras])
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]  # (N, 3, 3)
    a = proj.sum(axis=0)
    b = np.einsum("nij,nj->i", proj, centers)
    center = centers.mean(axis=0)
    eig = np.linalg.eigvalsh(a)
    if eig[-1] > 0 and eig[0] / eig[-1] > 1e-6:
        p = np.linalg.solve(a, b)
        in_front = (np.einsum("ni,ni->n", p[None] - centers, dirs) > 0).mean()
        if np.isfinite(p).all() and in_front > 0.5:
            center = p
    if half_width is None:
        hw = float(np.linalg.norm(centers - center, axis=1).mean()) / 3.0
        half_width = hw if hw > 0 and math.isfinite(hw) else 1.0
    elif not (math.isfinite(half_width) and half_width > 0):
        raise TrsplatError(f"--init-box {half_width!r}: expected a positive number")
    return torch.from_numpy(center).float(), float(half_width)


def init_gaussians(
    scene: Scene,
    *,
    init: str = "auto",
    n_random: int = 100_000,
    init_box: float | None = None,
    seed: int = 0,
) -> Gaussians:
    """Initial Gaussians for ``scene``.

    ``init``: ``"sfm"`` uses the scene's SfM points (:func:`init_from_points`); ``"random"`` puts
    ``n_random`` points uniformly in the cube of :func:`random_init_box` (half-width ``init_box``
    if given) with uniform random colours in [0, 1]; ``"auto"`` is ``"sfm"`` when the scene has
    a point cloud (``scene.points`` not None) and ``"random"`` otherwise. An empty SfM point
    cloud is an error for ``"auto"``/``"sfm"``. Random init is deterministic in ``seed``.
    """
    mode = init.strip().lower()
    if mode not in ("auto", "sfm", "random"):
        raise TrsplatError(f"--init {init!r}: expected 'auto', 'sfm' or 'random'")
    if mode == "auto":
        mode = "sfm" if scene.points is not None else "random"
    if mode == "sfm":
        if scene.points is None or scene.point_colors is None:
            raise TrsplatError(
                f"{scene.source}: this dataset has no SfM point cloud; use --init random"
            )
        if scene.points.shape[0] == 0:
            what = scene.points_file.name if scene.points_file is not None else "the point cloud"
            raise TrsplatError(
                f"{scene.points_file or scene.source}: {what} has no points; "
                f"use --init random (optionally with --init-box HALF_WIDTH)"
            )
        return init_from_points(scene.points, scene.point_colors)
    if int(n_random) != n_random or n_random <= 0:
        raise TrsplatError(f"--n-random {n_random!r}: expected a positive integer")
    center, half = random_init_box([f.camera for f in scene.train], init_box)
    gen = torch.Generator().manual_seed(int(seed))
    unit = torch.rand(int(n_random), 3, generator=gen, dtype=torch.float32)
    points = center[None, :] + (unit * 2.0 - 1.0) * half
    colors = torch.rand(int(n_random), 3, generator=gen, dtype=torch.float32)
    return init_from_points(points, colors)
