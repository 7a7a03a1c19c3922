"""NeRF-synthetic (Blender) ``transforms_{train,test}.json`` and the ``transforms.json`` of
instant-ngp and nerfstudio (Polycam, Record3D and ``ns-process-data`` write the latter).

All store one camera-to-world ``transform_matrix`` per frame in OpenGL/Blender axes (x right,
y up, camera looking down -z). As INRIA 3DGS does, columns 1 and 2 of the rotation are negated
(OpenGL -> OpenCV axes) and the matrix is inverted (float64) to give the ``world_to_camera`` of
:class:`~trsplat.camera.Camera`. A 3x4 matrix is accepted (last row 0 0 0 1 implied).

Intrinsics, per frame, from the frame's own keys overriding the top-level keys (instant-ngp and
nerfstudio allow either place; a frame's own ``camera_angle_x|y`` also overrides an inherited
``fl_x|y``):

* ``w``, ``h``: image size; if absent, read from the image file's header.
* ``fl_x`` (else ``0.5 * w / tan(camera_angle_x / 2)``); ``fl_y`` (else from ``camera_angle_y``
  likewise with ``h``, else ``fl_x``).
* ``cx``, ``cy`` (else ``w / 2``, ``h / 2``), COLMAP's continuous pixel convention, which is what
  instant-ngp's ``colmap2nerf.py`` and nerfstudio write.
* Lens: ``camera_model`` (nerfstudio) ``OPENCV`` (also ``PINHOLE``, ``SIMPLE_PINHOLE``) is
  perspective and ``OPENCV_FISHEYE`` is fisheye; without it (instant-ngp) ``is_fisheye``
  decides. Perspective frames use ``k1 k2 p1 p2 k3`` as OpenCV does (nerfstudio's meaning of
  ``k3``); a non-zero ``k4`` is refused (nerfstudio reads it as an r^8 term, instant-ngp ignores
  it, OpenCV has no such term). Fisheye frames use ``k1 k2 k3 k4``; non-zero ``p1 p2`` are
  refused. Other camera models (``EQUIRECTANGULAR``, ...) are refused. A frame with distortion
  gets a :class:`~trsplat.data.undistort.Lens` and the undistorted pinhole camera.

nerfstudio extras: ``applied_transform`` (the transform nerfstudio applied to COLMAP's world to
get the file's poses and point cloud) is checked but not applied again, since the poses and
``ply_file_path`` already share the file's world; ``ply_file_path`` gives the SfM points
(:func:`read_transforms_points`); ``mask_path`` is ignored with a warning (put the mask in the
image's alpha channel instead).

``file_path`` is relative to the JSON file's folder (or absolute) and is tried as written, then
with ``.png``, ``.jpg``, ``.jpeg`` appended (NeRF-synthetic omits the extension). Frames whose
image file is missing are skipped with a single warning that counts them; if every frame is
missing the file is refused. Frames repeating an image are dropped with a warning if they agree
and refused if not. ``transforms_val.json`` is never read.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trsplat.camera import Camera
from trsplat.data.images import ImageView, drop_repeated_views, read_image_size
from trsplat.data.undistort import Lens, pinhole_for
from trsplat.errors import TrsplatError, warn

_EXTENSIONS = ("", ".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")
_INTRINSIC_KEYS = ("w", "h", "fl_x", "fl_y", "cx", "cy", "camera_angle_x", "camera_angle_y",
                   "k1", "k2", "k3", "k4", "p1", "p2", "is_fisheye", "camera_model")
_PERSPECTIVE_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
_FISHEYE_MODELS = ("OPENCV_FISHEYE",)
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")


def opengl_c2w_to_w2c(c2w: np.ndarray) -> np.ndarray:
    """(4, 4) OpenGL camera-to-world -> (4, 4) float64 OpenCV world-to-camera."""
    m = np.array(c2w, dtype=np.float64)
    m[:3, 1:3] *= -1.0
    return np.linalg.inv(m)


def _load_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise TrsplatError(f"{path}: file not found") from None
    except OSError as exc:
        raise TrsplatError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise TrsplatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise TrsplatError(f"{path}: expected a JSON object with a 'frames' list")
    return data


def _resolve_image(base: Path, file_path: str) -> tuple[Path | None, Path]:
    """(existing image path or None, the path as written) for a frame's ``file_path``."""
    p = Path(file_path)
    if not p.is_absolute():
        p = base / p
    for ext in _EXTENSIONS:
        candidate = Path(str(p) + ext) if ext else p
        if candidate.is_file():
            return candidate, p
    return None, p


def _number(value: Any, what: str, where: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TrsplatError(f"{where}: {what} = {value!r} is not a number") from None
    if not math.isfinite(v):
        raise TrsplatError(f"{where}: {what} is {v} (NaN or infinite)")
    return v


def _size_value(value: Any, what: str, where: str) -> int:
    v = _number(value, what, where)
    if v <= 0 or v != round(v):
        raise TrsplatError(f"{where}: {what} = {value!r} is not a positive integer")
    return int(round(v))


def _frame_lens(merged: dict[str, Any], w: int, h: int, intrinsics: tuple[float, float, float, float],
                where: str) -> Lens | None:
    """The lens of one frame, or None if it is a pinhole camera (see the module docstring)."""
    k = {key: _number(merged[key], key, where) if key in merged else 0.0 for key in _DISTORTION_KEYS}
    fisheye_flag = bool(merged.get("is_fisheye", False))
    if "camera_model" in merged:
        model = str(merged["camera_model"]).upper()
        if model in _FISHEYE_MODELS:
            fisheye = True
        elif model in _PERSPECTIVE_MODELS:
            fisheye = False
            if fisheye_flag:
                raise TrsplatError(f"{where}: camera_model {model} contradicts is_fisheye = true")
        else:
            raise TrsplatError(
                f"{where}: camera_model {merged['camera_model']!r} is not supported (trsplat reads "
                f"{', '.join(_PERSPECTIVE_MODELS + _FISHEYE_MODELS)} cameras)"
            )
    else:
        fisheye = fisheye_flag
    fx, fy, cx, cy = intrinsics
    if fisheye:
        tangential = {key: k[key] for key in ("p1", "p2") if k[key] != 0.0}
        if tangential:
            raise TrsplatError(
                f"{where}: a fisheye camera has no tangential distortion, but "
                + ", ".join(f"{key}={v}" for key, v in tangential.items()) + " is set"
            )
        return Lens("OPENCV_FISHEYE", "fisheye", w, h, fx, fy, cx, cy,
                    (k["k1"], k["k2"], k["k3"], k["k4"]))
    if k["k4"] != 0.0:
        raise TrsplatError(
            f"{where}: k4={k['k4']} on a perspective camera is not supported (nerfstudio reads it as "
            f"an r^8 radial term, instant-ngp ignores it, OpenCV has no such term); perspective "
            f"cameras take k1 k2 k3 p1 p2"
        )
    lens = Lens("OPENCV", "perspective", w, h, fx, fy, cx, cy,
                (k["k1"], k["k2"], k["p1"], k["p2"], k["k3"], 0.0, 0.0, 0.0))
    return None if lens.is_identity else lens


def _frame_camera(
    merged: dict[str, Any], c2w_raw: Any, image_path: Path, name: str, where: str
) -> tuple[Camera, Lens | None]:
    """The camera trsplat trains with for one frame, and its lens (see the module docstring)."""
    if "w" in merged and "h" in merged:
        w = _size_value(merged["w"], "w", where)
        h = _size_value(merged["h"], "h", where)
    else:
        w, h = read_image_size(image_path)

    if "fl_x" in merged:
        fx = _number(merged["fl_x"], "fl_x", where)
    elif "camera_angle_x" in merged:
        ax = _number(merged["camera_angle_x"], "camera_angle_x", where)
        if not 0.0 < ax < math.pi:
            raise TrsplatError(f"{where}: camera_angle_x = {ax} is not in (0, pi) radians")
        fx = 0.5 * w / math.tan(0.5 * ax)
    else:
        raise TrsplatError(f"{where}: no focal length (need fl_x or camera_angle_x)")
    if "fl_y" in merged:
        fy = _number(merged["fl_y"], "fl_y", where)
    elif "camera_angle_y" in merged:
        ay = _number(merged["camera_angle_y"], "camera_angle_y", where)
        if not 0.0 < ay < math.pi:
            raise TrsplatError(f"{where}: camera_angle_y = {ay} is not in (0, pi) radians")
        fy = 0.5 * h / math.tan(0.5 * ay)
    else:
        fy = fx
    if fx <= 0 or fy <= 0:
        raise TrsplatError(f"{where}: focal lengths must be positive (fl_x={fx}, fl_y={fy})")
    cx = _number(merged["cx"], "cx", where) if "cx" in merged else 0.5 * w
    cy = _number(merged["cy"], "cy", where) if "cy" in merged else 0.5 * h

    try:
        c2w = np.asarray(c2w_raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise TrsplatError(f"{where}: transform_matrix is not a matrix of numbers") from None
    if c2w.shape == (3, 4):
        c2w = np.vstack([c2w, [0.0, 0.0, 0.0, 1.0]])
    if c2w.shape != (4, 4):
        raise TrsplatError(f"{where}: transform_matrix has shape {c2w.shape}, expected 4x4")
    if not np.isfinite(c2w).all():
        raise TrsplatError(f"{where}: transform_matrix contains NaN or infinite values")
    try:
        w2c = opengl_c2w_to_w2c(c2w)
    except np.linalg.LinAlgError:
        w2c = np.full((4, 4), np.nan)
    if not np.isfinite(w2c).all() or abs(np.linalg.det(c2w[:3, :3])) < 1e-12:
        raise TrsplatError(f"{where}: transform_matrix is singular")
    lens = _frame_lens(merged, w, h, (fx, fy, cx, cy), where)
    if lens is not None:
        pin = pinhole_for(lens, where)
        w, h, fx, fy, cx, cy = pin.width, pin.height, pin.fx, pin.fy, pin.cx, pin.cy
    camera = Camera(width=w, height=h, fx=fx, fy=fy, cx=cx, cy=cy,
                    world_to_camera=torch.from_numpy(w2c).float(), name=name)
    return camera, lens


def read_transforms(path: str | Path) -> list[ImageView]:
    """Read a ``transforms*.json`` file -> one :class:`ImageView` per frame with an image, in file
    order. Camera names are the image paths relative to the JSON folder (e.g. ``train/r_0.png``).

    Frames whose image file is missing are skipped with one warning (:func:`trsplat.errors.warn`)
    counting them;
    if all are missing (or there are no frames) a TrsplatError is raised.
    """
    path = Path(path)
    data = _load_json(path)
    base = path.parent
    top = {k: data[k] for k in _INTRINSIC_KEYS if k in data}
    frames = data["frames"]
    if not frames:
        raise TrsplatError(f"{path}: has no frames")
    _check_applied_transform(data, path)
    views: list[ImageView] = []
    missing: list[Path] = []
    masked: list[int] = []
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise TrsplatError(f"{path}: frame {index} lacks file_path or transform_matrix")
        file_path = str(frame["file_path"])
        where = f"{path}: frame {index} ({file_path})"
        image_path, written = _resolve_image(base, file_path)
        if image_path is None:
            missing.append(written)
            continue
        own = {k: frame[k] for k in _INTRINSIC_KEYS if k in frame}
        merged = {**top, **own}
        # a frame's own field of view beats an inherited focal length (and vice versa)
        for fl, angle in (("fl_x", "camera_angle_x"), ("fl_y", "camera_angle_y")):
            if angle in own and fl not in own:
                merged.pop(fl, None)
        try:
            name = image_path.relative_to(base).as_posix()
        except ValueError:
            name = image_path.as_posix()
        camera, lens = _frame_camera(merged, frame["transform_matrix"], image_path, name, where)
        views.append(ImageView(camera, image_path, lens))
        if "mask_path" in frame:
            masked.append(index)
    if not views:
        raise TrsplatError(
            f"{path}: none of the {len(frames)} frames has an image file "
            f"(first looked for {missing[0]} with extensions {', '.join(e for e in _EXTENSIONS if e)})"
        )
    if missing:
        warn(f"{path.name}: {len(missing)} of {len(frames)} frames skipped: image file missing "
             f"(first: {missing[0]})")
    if masked:
        warn(f"{path}: {len(masked)} frames have a mask_path (first: frame {masked[0]}); masks are "
             f"not used: put the mask in the image's alpha channel instead")
    return drop_repeated_views(views, path)


def _check_applied_transform(data: dict[str, Any], path: Path) -> None:
    """nerfstudio's ``applied_transform`` must be a finite 3x4 or 4x4 matrix (it is not applied)."""
    if "applied_transform" not in data:
        return
    try:
        m = np.asarray(data["applied_transform"], dtype=np.float64)
    except (TypeError, ValueError):
        raise TrsplatError(f"{path}: applied_transform is not a matrix of numbers") from None
    if m.shape not in ((3, 4), (4, 4)) or not np.isfinite(m).all():
        raise TrsplatError(f"{path}: applied_transform must be a finite 3x4 or 4x4 matrix, got shape {m.shape}")


def read_transforms_points(path: str | Path) -> tuple[np.ndarray, np.ndarray, Path] | None:
    """The SfM point cloud of a nerfstudio ``transforms.json`` (its ``ply_file_path``):
    ``(xyz (P, 3) float32, rgb (P, 3) float32 in [0, 1], ply path)``, or None if the file names no
    point cloud. A named but missing file warns and gives None (random initialisation); a ply
    without x, y, z vertices is an error. Colours default to 0.5 grey when the ply has none.
    """
    path = Path(path)
    data = _load_json(path)
    if "ply_file_path" not in data:
        return None
    ply = Path(str(data["ply_file_path"]))
    if not ply.is_absolute():
        ply = path.parent / ply
    if not ply.is_file():
        warn(f"{path}: ply_file_path {ply} does not exist; starting from random points")
        return None
    from plyfile import PlyData, PlyParseError

    try:
        vertex = PlyData.read(str(ply))["vertex"]
        names = vertex.data.dtype.names or ()
        if not {"x", "y", "z"} <= set(names):
            raise TrsplatError(f"{ply}: the ply's vertices have no x, y, z")
        xyz = np.stack([np.asarray(vertex[c], dtype=np.float32) for c in ("x", "y", "z")], axis=1)
        if {"red", "green", "blue"} <= set(names):
            rgb = np.stack([np.asarray(vertex[c], dtype=np.float32) for c in ("red", "green", "blue")], axis=1)
            rgb = np.clip(rgb / np.float32(255.0), 0.0, 1.0)
        else:
            rgb = np.full_like(xyz, 0.5)
    except TrsplatError:
        raise
    except (PlyParseError, KeyError, ValueError, OSError, EOFError) as exc:
        raise TrsplatError(f"{ply}: not a readable ply point cloud ({exc})") from None
    if not np.isfinite(xyz).all():
        raise TrsplatError(f"{ply}: {int((~np.isfinite(xyz)).any(axis=1).sum())} points have NaN or infinite coordinates")
    return xyz.reshape(-1, 3), rgb.reshape(-1, 3), ply
