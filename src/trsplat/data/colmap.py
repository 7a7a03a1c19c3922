"""COLMAP sparse models (binary ``.bin`` and text ``.txt``): cameras, images and 3D points.

Conventions (COLMAP's, which are also trsplat's, see :mod:`trsplat.camera`):

* ``images``: ``qvec = (qw, qx, qy, qz)`` and ``tvec`` give the **world -> camera** transform
  ``x_cam = R(qvec) @ x_world + tvec`` in OpenCV axes (x right, y down, z forward). The quaternion
  is normalised before use. ``Camera.world_to_camera = [[R, t], [0, 1]]`` (float32).
* Intrinsics are in pixels in COLMAP's continuous convention (pixel (i, j) covers
  [i, i+1) x [j, j+1)).
* **Principal point**: trsplat keeps COLMAP's ``cx, cy``. This is a documented departure from
  INRIA 3DGS, which drops them and always uses ``W/2, H/2``; the renderer supports arbitrary
  ``cx, cy`` (see the conventions note, section 3). For the usual undistorted models the two
  agree to a fraction of a pixel.
* Camera models: ``SIMPLE_PINHOLE`` and ``PINHOLE`` are used as they are, and so are
  ``SIMPLE_RADIAL``, ``RADIAL``, ``OPENCV`` and ``FULL_OPENCV`` whose distortion coefficients are
  all exactly 0. Those with distortion, and ``OPENCV_FISHEYE``, ``SIMPLE_RADIAL_FISHEYE`` and
  ``RADIAL_FISHEYE``, get a :class:`~trsplat.data.undistort.Lens`: their images are undistorted
  on load to the pinhole camera COLMAP's ``image_undistorter`` would choose
  (:func:`~trsplat.data.undistort.pinhole_for`), and that pinhole camera (a new size and
  principal point, the same focal lengths) is the view's camera. ``FOV`` and
  ``THIN_PRISM_FISHEYE`` are refused with the ``colmap image_undistorter`` command to run.
  Unknown model ids/names are errors.

Binary layouts (little-endian, as written by COLMAP's ``Write*Binary``):

* ``cameras.bin``: u64 count; per camera: i32 camera_id, i32 model_id, u64 width, u64 height,
  f64 params[n(model)].
* ``images.bin``: u64 count; per image: i32 image_id, f64 qvec[4], f64 tvec[3], i32 camera_id,
  NUL-terminated name, u64 num_points2D, then num_points2D x (f64 x, f64 y, i64 point3D_id).
* ``points3D.bin``: u64 count; per point: u64 point3D_id, f64 xyz[3], u8 rgb[3], f64 error,
  u64 track_length, then track_length x (i32 image_id, i32 point2D_idx).

Truncated or otherwise corrupt files raise :class:`~trsplat.errors.TrsplatError` naming the file
(never a ``struct.error``).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trsplat.camera import Camera
from trsplat.data.images import ImageView, drop_repeated_views
from trsplat.data.undistort import Lens, Pinhole, pinhole_for
from trsplat.errors import TrsplatError

#: COLMAP camera model id -> (name, number of parameters), from COLMAP's ``models.h``.
CAMERA_MODELS: dict[int, tuple[str, int]] = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
}
MODEL_PARAM_COUNTS: dict[str, int] = {name: n for name, n in CAMERA_MODELS.values()}

#: Models trsplat can use: name -> (number of leading pinhole parameters, (f, cx, cy) or
#: (fx, fy, cx, cy); lens kind; where each OpenCV coefficient comes from in the remaining
#: parameters, None for 0). OpenCV's orders: perspective (k1, k2, p1, p2, k3, k4, k5, k6),
#: fisheye (k1, k2, k3, k4); COLMAP's FULL_OPENCV and OPENCV_FISHEYE use the same orders.
_MODELS: dict[str, tuple[int, str, tuple[int | None, ...]]] = {
    "SIMPLE_PINHOLE": (3, "perspective", (None,) * 8),
    "PINHOLE": (4, "perspective", (None,) * 8),
    "SIMPLE_RADIAL": (3, "perspective", (0, None, None, None, None, None, None, None)),
    "RADIAL": (3, "perspective", (0, 1, None, None, None, None, None, None)),
    "OPENCV": (4, "perspective", (0, 1, 2, 3, None, None, None, None)),
    "FULL_OPENCV": (4, "perspective", (0, 1, 2, 3, 4, 5, 6, 7)),
    "OPENCV_FISHEYE": (4, "fisheye", (0, 1, 2, 3)),
    "SIMPLE_RADIAL_FISHEYE": (3, "fisheye", (0, None, None, None)),
    "RADIAL_FISHEYE": (3, "fisheye", (0, 1, None, None)),
}

_CAMERA_REC = struct.Struct("<iiQQ")  # camera_id, model_id, width, height
_IMAGE_REC = struct.Struct("<i4d3di")  # image_id, qvec, tvec, camera_id
_POINT_REC = struct.Struct("<Q3d3BdQ")  # id, xyz, rgb, error, track_length
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class ColmapCamera:
    """One entry of ``cameras.bin|txt``. ``params`` are in COLMAP's order for ``model``."""

    camera_id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class ColmapImage:
    """One registered image: world->camera rotation ``qvec`` (w, x, y, z) and translation ``tvec``."""

    image_id: int
    qvec: tuple[float, float, float, float]
    tvec: tuple[float, float, float]
    camera_id: int
    name: str


@dataclass
class ColmapModel:
    """A COLMAP sparse model.

    Attributes:
        path: the folder holding the model files.
        cameras: camera_id -> ColmapCamera.
        images: image_id -> ColmapImage.
        xyz: (P, 3) float32 world positions of the 3D points (P may be 0).
        rgb: (P, 3) float32 colours in [0, 1].
        cameras_file, images_file: the files read.
        points_file: the points3D file read, or None if the model has none.
    """

    path: Path
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    xyz: np.ndarray
    rgb: np.ndarray
    cameras_file: Path
    images_file: Path
    points_file: Path | None


# -- binary -----------------------------------------------------------------------------------
class _BinaryReader:
    """Bounds-checked sequential reader over a whole file's bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise TrsplatError(f"{path}: cannot read file ({exc.strerror or exc})") from None
        self.pos = 0

    def corrupt(self, what: str) -> TrsplatError:
        return TrsplatError(f"{self.path}: truncated or corrupt COLMAP binary file ({what})")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, rec: struct.Struct) -> tuple:
        if rec.size > self.remaining:
            raise self.corrupt(
                f"unexpected end of file at byte {self.pos}: needed {rec.size} bytes, "
                f"{self.remaining} left"
            )
        values = rec.unpack_from(self.data, self.pos)
        self.pos += rec.size
        return values

    def take_doubles(self, n: int) -> tuple[float, ...]:
        return self.take(struct.Struct(f"<{n}d"))

    def skip(self, n_bytes: int) -> None:
        if n_bytes > self.remaining:
            raise self.corrupt(
                f"unexpected end of file at byte {self.pos}: needed {n_bytes} bytes, "
                f"{self.remaining} left"
            )
        self.pos += n_bytes

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise self.corrupt(f"unterminated image name at byte {self.pos}")
        raw = self.data[self.pos:end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.corrupt(f"image name at byte {self.pos} is not valid UTF-8") from None

    def count(self, min_record_size: int, what: str) -> int:
        (n,) = self.take(_U64)
        if n * min_record_size > self.remaining:
            raise self.corrupt(
                f"header says {n} {what} (at least {n * min_record_size} bytes) "
                f"but only {self.remaining} bytes follow"
            )
        return n

    def finish(self) -> None:
        if self.remaining:
            raise self.corrupt(f"{self.remaining} unexpected bytes after the last record")


def read_cameras_binary(path: str | Path) -> dict[int, ColmapCamera]:
    """Read ``cameras.bin``. Unknown model ids raise TrsplatError naming the file."""
    r = _BinaryReader(Path(path))
    n = r.count(_CAMERA_REC.size + 3 * 8, "cameras")
    cameras: dict[int, ColmapCamera] = {}
    for _ in range(n):
        cam_id, model_id, width, height = r.take(_CAMERA_REC)
        if model_id not in CAMERA_MODELS:
            raise TrsplatError(
                f"{r.path}: camera {cam_id} has unknown COLMAP camera model id {model_id} "
                f"(known: {', '.join(f'{k}={v[0]}' for k, v in CAMERA_MODELS.items())})"
            )
        model, n_params = CAMERA_MODELS[model_id]
        params = r.take_doubles(n_params)
        cameras[cam_id] = ColmapCamera(cam_id, model, int(width), int(height), tuple(params))
    r.finish()
    return cameras


def read_images_binary(path: str | Path) -> dict[int, ColmapImage]:
    """Read ``images.bin`` (the 2D keypoints are skipped)."""
    r = _BinaryReader(Path(path))
    n = r.count(_IMAGE_REC.size + 1 + 8, "images")
    images: dict[int, ColmapImage] = {}
    for _ in range(n):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = r.take(_IMAGE_REC)
        name = r.cstring()
        (n_points,) = r.take(_U64)
        r.skip(24 * n_points)
        images[image_id] = ColmapImage(image_id, (qw, qx, qy, qz), (tx, ty, tz), cam_id, name)
    r.finish()
    return images


def read_points3d_binary(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``points3D.bin`` -> (xyz (P, 3) float32, rgb (P, 3) float32 in [0, 1])."""
    r = _BinaryReader(Path(path))
    n = r.count(_POINT_REC.size, "points")
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    data, unpack, rec_size = r.data, _POINT_REC.unpack_from, _POINT_REC.size
    pos, size = r.pos, len(data)
    for i in range(n):
        if pos + rec_size > size:
            r.pos = pos
            r.take(_POINT_REC)  # raises the "unexpected end of file" error
        _, x, y, z, cr, cg, cb, _, track = unpack(data, pos)
        pos += rec_size + 8 * track
        xyz[i] = (x, y, z)
        rgb[i] = (cr, cg, cb)
    if pos > size:
        r.pos = size
        raise r.corrupt(f"the track of the last point runs {pos - size} bytes past the end")
    r.pos = pos
    r.finish()
    return xyz.astype(np.float32), rgb.astype(np.float32) / np.float32(255.0)


# -- text -------------------------------------------------------------------------------------
def _read_text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise TrsplatError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise TrsplatError(f"{path}: not a UTF-8 text file (corrupt COLMAP text model?)") from None


def read_cameras_text(path: str | Path) -> dict[int, ColmapCamera]:
    """Read ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]`` per line."""
    path = Path(path)
    cameras: dict[int, ColmapCamera] = {}
    for lineno, line in enumerate(_read_text_lines(path), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) < 4:
            raise TrsplatError(f"{path}:{lineno}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...'")
        model = parts[1].upper()
        if model not in MODEL_PARAM_COUNTS:
            raise TrsplatError(
                f"{path}:{lineno}: unknown COLMAP camera model {parts[1]!r} "
                f"(known: {', '.join(MODEL_PARAM_COUNTS)})"
            )
        try:
            cam_id, width, height = int(parts[0]), int(parts[2]), int(parts[3])
            params = tuple(float(p) for p in parts[4:])
        except ValueError:
            raise TrsplatError(f"{path}:{lineno}: malformed camera line {line!r}") from None
        if len(params) != MODEL_PARAM_COUNTS[model]:
            raise TrsplatError(
                f"{path}:{lineno}: camera model {model} takes {MODEL_PARAM_COUNTS[model]} "
                f"parameters, got {len(params)}"
            )
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cameras


def read_images_text(path: str | Path) -> dict[int, ColmapImage]:
    """Read ``images.txt``: per image a line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME``
    followed by one POINTS2D line (possibly empty), exactly as COLMAP writes it."""
    path = Path(path)
    lines = _read_text_lines(path)
    images: dict[int, ColmapImage] = {}
    i = 0
    while i < len(lines):
        lineno, line = i + 1, lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        parts = line.split(maxsplit=9)
        if len(parts) < 10:
            raise TrsplatError(
                f"{path}:{lineno}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME'"
            )
        try:
            image_id = int(parts[0])
            q = tuple(float(v) for v in parts[1:5])
            t = tuple(float(v) for v in parts[5:8])
            cam_id = int(parts[8])
        except ValueError:
            raise TrsplatError(f"{path}:{lineno}: malformed image line {line!r}") from None
        images[image_id] = ColmapImage(image_id, q, t, cam_id, parts[9].strip())  # type: ignore[arg-type]
        i += 1  # the POINTS2D line that follows every image line
    return images


def read_points3d_text(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK[]`` per line."""
    path = Path(path)
    xyz: list[tuple[float, float, float]] = []
    rgb: list[tuple[int, int, int]] = []
    for lineno, line in enumerate(_read_text_lines(path), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        try:
            if len(parts) < 8:
                raise ValueError
            xyz.append((float(parts[1]), float(parts[2]), float(parts[3])))
            rgb.append((int(parts[4]), int(parts[5]), int(parts[6])))
        except ValueError:
            raise TrsplatError(
                f"{path}:{lineno}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK...'"
            ) from None
    xyz_a = np.asarray(xyz, dtype=np.float32).reshape(-1, 3)
    rgb_a = np.clip(np.asarray(rgb, dtype=np.float32).reshape(-1, 3), 0, 255) / np.float32(255.0)
    return xyz_a, rgb_a


# -- model folder -----------------------------------------------------------------------------
def find_model_dir(folder: str | Path) -> Path | None:
    """The folder holding ``cameras.bin|txt``: ``folder/sparse/0``, ``folder/sparse`` or ``folder``."""
    folder = Path(folder)
    for candidate in (folder / "sparse" / "0", folder / "sparse", folder):
        if (candidate / "cameras.bin").is_file() or (candidate / "cameras.txt").is_file():
            return candidate
    return None


def _model_file(model_dir: Path, stem: str, required: bool = True) -> Path | None:
    for ext in (".bin", ".txt"):
        p = model_dir / f"{stem}{ext}"
        if p.is_file():
            return p
    if required:
        raise TrsplatError(f"{model_dir}: COLMAP model has no {stem}.bin or {stem}.txt")
    return None


def read_model(folder: str | Path) -> ColmapModel:
    """Read a COLMAP model from ``folder`` (or its ``sparse/0`` / ``sparse`` subfolder).

    Each of cameras / images / points3D is read from ``.bin`` if present, else ``.txt``. A model
    without a points3D file gets an empty point cloud (``points_file`` None).
    """
    model_dir = find_model_dir(folder)
    if model_dir is None:
        raise TrsplatError(
            f"{folder}: no COLMAP model (looked for sparse/0/cameras.bin|txt, "
            f"sparse/cameras.bin|txt and cameras.bin|txt)"
        )
    cameras_file = _model_file(model_dir, "cameras")
    images_file = _model_file(model_dir, "images")
    points_file = _model_file(model_dir, "points3D", required=False)
    assert cameras_file is not None and images_file is not None
    binary = cameras_file.suffix == ".bin"
    cameras = read_cameras_binary(cameras_file) if binary else read_cameras_text(cameras_file)
    images = (
        read_images_binary(images_file)
        if images_file.suffix == ".bin"
        else read_images_text(images_file)
    )
    if points_file is None:
        xyz = np.zeros((0, 3), dtype=np.float32)
        rgb = np.zeros((0, 3), dtype=np.float32)
    elif points_file.suffix == ".bin":
        xyz, rgb = read_points3d_binary(points_file)
    else:
        xyz, rgb = read_points3d_text(points_file)
    if not np.isfinite(xyz).all():
        bad = int((~np.isfinite(xyz)).any(axis=1).sum())
        raise TrsplatError(f"{points_file}: {bad} 3D points have NaN or infinite coordinates")
    return ColmapModel(model_dir, cameras, images, xyz, rgb, cameras_file, images_file, points_file)


# -- conversion to trsplat cameras --------------------------------------------------------------
def qvec_to_rotmat(qvec: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
    """(3, 3) float64 rotation matrix of the quaternion (w, x, y, z) (normalised first)."""
    q = np.asarray(qvec, dtype=np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-12:
        raise ValueError(f"quaternion {q.tolist()} has no direction")
    w, x, y, z = q / norm
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def _undistort_hint() -> str:
    return ("trsplat needs pinhole images or a camera model it can undistort: run `colmap "
            "image_undistorter --image_path <images folder> --input_path <this sparse model folder> "
            "--output_path <new folder>` and point trsplat at that new folder")


def camera_model(camera: ColmapCamera, source: Path | str = "cameras") -> tuple[Pinhole, Lens | None]:
    """The pinhole camera trsplat trains with for a COLMAP camera, and its lens.

    Pinhole models, and distorted perspective models whose coefficients are all 0, give their
    own intrinsics and no lens. Other supported models give the undistorted pinhole camera
    (:func:`~trsplat.data.undistort.pinhole_for`) and the :class:`Lens` their images are
    undistorted from. ``FOV`` and ``THIN_PRISM_FISHEYE`` raise TrsplatError with the
    ``colmap image_undistorter`` command to run; so do invalid intrinsics or sizes.
    """
    model, p = camera.model, camera.params
    if model not in _MODELS:
        raise TrsplatError(
            f"{source}: camera {camera.camera_id} uses the {model} camera model, which trsplat "
            f"cannot undistort; {_undistort_hint()}"
        )
    n, kind, where = _MODELS[model]
    if n == 3:
        fx = fy = p[0]
        cx, cy = p[1], p[2]
    else:
        fx, fy, cx, cy = p[:4]
    values = (fx, fy, cx, cy, *p[n:])
    if not all(math.isfinite(v) for v in values) or fx <= 0 or fy <= 0:
        raise TrsplatError(
            f"{source}: camera {camera.camera_id} has invalid intrinsics "
            f"fx={fx} fy={fy} cx={cx} cy={cy} (params {tuple(p)})"
        )
    if camera.width <= 0 or camera.height <= 0:
        raise TrsplatError(
            f"{source}: camera {camera.camera_id} has invalid size {camera.width}x{camera.height}"
        )
    coeffs = tuple(0.0 if i is None else float(p[n + i]) for i in where)
    lens = Lens(model, kind, int(camera.width), int(camera.height),  # type: ignore[arg-type]
                float(fx), float(fy), float(cx), float(cy), coeffs)
    if lens.is_identity:
        return Pinhole(lens.width, lens.height, lens.fx, lens.fy, lens.cx, lens.cy), None
    return pinhole_for(lens, f"{source}: camera {camera.camera_id}"), lens


def pinhole_intrinsics(camera: ColmapCamera, source: Path | str = "cameras") -> tuple[float, float, float, float]:
    """(fx, fy, cx, cy) in pixels of the pinhole camera trsplat trains with (see :func:`camera_model`;
    for a distorted camera these are the undistorted camera's, whose size also differs)."""
    pin, _ = camera_model(camera, source)
    return pin.fx, pin.fy, pin.cx, pin.cy


def _image_view(model: ColmapModel, image: ColmapImage, images_dir: Path) -> ImageView:
    cam = model.cameras.get(image.camera_id)
    if cam is None:
        raise TrsplatError(
            f"{model.images_file}: image {image.name!r} refers to camera {image.camera_id}, "
            f"which is not in {model.cameras_file.name}"
        )
    pin, lens = camera_model(cam, model.cameras_file)
    if not all(math.isfinite(v) for v in (*image.qvec, *image.tvec)):
        raise TrsplatError(
            f"{model.images_file}: image {image.name!r} has a NaN or infinite pose "
            f"(qvec={image.qvec}, tvec={image.tvec})"
        )
    try:
        rot = qvec_to_rotmat(image.qvec)
    except ValueError as exc:
        raise TrsplatError(f"{model.images_file}: image {image.name!r}: {exc}") from None
    w2c = np.eye(4)
    w2c[:3, :3] = rot
    w2c[:3, 3] = image.tvec
    camera = Camera(
        width=pin.width,
        height=pin.height,
        fx=pin.fx,
        fy=pin.fy,
        cx=pin.cx,
        cy=pin.cy,
        world_to_camera=torch.from_numpy(w2c).float(),
        name=image.name,
    )
    return ImageView(camera, images_dir / image.name, lens)


def image_camera(model: ColmapModel, image: ColmapImage) -> Camera:
    """The trsplat :class:`Camera` of one registered image: its native pinhole camera, or for a
    distorted camera model the undistorted pinhole camera (see :func:`camera_model`)."""
    return _image_view(model, image, Path(".")).camera


def find_images_dir(scene_dir: str | Path, model_dir: str | Path) -> Path:
    """The image folder of a COLMAP scene: the first existing ``images/`` in ``scene_dir``, or
    above the model folder (``model_dir/..`` and ``model_dir/../..``, for ``sparse/0``)."""
    scene_dir, model_dir = Path(scene_dir), Path(model_dir)
    candidates = [scene_dir / "images", model_dir / "images", model_dir.parent / "images",
                  model_dir.parent.parent / "images"]
    for c in candidates:
        if c.is_dir():
            return c
    raise TrsplatError(
        f"{scene_dir}: COLMAP model found in {model_dir} but no images folder "
        f"(looked for {', '.join(str(c) for c in dict.fromkeys(candidates))})"
    )


def colmap_views(model: ColmapModel, images_dir: str | Path) -> list[ImageView]:
    """One :class:`ImageView` per registered image, sorted by image name (with the lens of
    distorted camera models).

    Raises TrsplatError if any registered image file is missing from ``images_dir``. An image
    registered twice is kept once (with a warning) if both entries agree, refused otherwise.
    """
    images_dir = Path(images_dir)
    views = [
        _image_view(model, img, images_dir)
        for img in sorted(model.images.values(), key=lambda im: im.name)
    ]
    missing = [v.image_path for v in views if not v.image_path.is_file()]
    if missing:
        raise TrsplatError(
            f"{images_dir}: {len(missing)} of {len(views)} images registered in "
            f"{model.images_file.name} are missing (first: {missing[0].name})"
        )
    return drop_repeated_views(views, model.images_file)
