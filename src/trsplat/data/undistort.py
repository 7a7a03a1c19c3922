"""Lens distortion: a distorted camera (:class:`Lens`), the pinhole camera it is undistorted to,
and the image remap. OpenCV does the geometry and the resampling (docs/captures.md says why).

Models. Every supported model is one of OpenCV's two distortion models:

* ``"perspective"``: OpenCV's standard model, coefficients ``(k1, k2, p1, p2, k3, k4, k5, k6)``
  with ``x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)
  + 2 p1 x y + p2 (r^2 + 2 x^2)`` (and symmetrically for y). COLMAP's SIMPLE_RADIAL (k),
  RADIAL (k1, k2), OPENCV (k1, k2, p1, p2) and FULL_OPENCV (all eight, same order) are this model
  with the missing coefficients 0.
* ``"fisheye"``: OpenCV's fisheye model, coefficients ``(k1, k2, k3, k4)``:
  ``theta = atan(r)``, ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``,
  ``x_d = x theta_d / r``. COLMAP's OPENCV_FISHEYE is exactly this model, its
  SIMPLE_RADIAL_FISHEYE (k) and RADIAL_FISHEYE (k1, k2) are it with the other coefficients 0.

Pixel convention: intrinsics are COLMAP's (the centre of pixel (i, j) is at (i + 0.5, j + 0.5)),
as everywhere in trsplat; OpenCV puts pixel centres at integers, so every matrix handed to OpenCV
has ``cx - 0.5, cy - 0.5``.

The pinhole camera (:func:`pinhole_for`) is chosen as COLMAP's ``image_undistorter`` does with its
default options (``blank_pixels = 0``, ``min_scale = 0.2``, ``max_scale = 2.0``): the focal
lengths are kept and the image is cropped (or grown) until it has no blank pixel, the principal
point scaling with the size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from trsplat.errors import TrsplatError

LensKind = Literal["perspective", "fisheye"]
N_COEFFS: dict[str, int] = {"perspective": 8, "fisheye": 4}

#: COLMAP's undistorter defaults (``UndistortCameraOptions``): no blank pixels, scale in [0.2, 2].
MIN_SCALE, MAX_SCALE = 0.2, 2.0
#: A border point whose re-distortion misses its pixel by more than this (pixels) has no inverse.
INVERSE_TOLERANCE_PX = 1e-3
#: Resampling: bilinear, as COLMAP's undistorter (OpenCV quantises positions to 1/32 pixel).
INTERPOLATION = "bilinear"


@dataclass(frozen=True)
class Lens:
    """A distorted camera at its native resolution.

    Attributes:
        model: the name the capture used (e.g. ``"OPENCV"``), for messages and cache keys.
        kind: ``"perspective"`` or ``"fisheye"`` (see the module docstring).
        width, height: the distorted image's size in pixels.
        fx, fy, cx, cy: pinhole part in pixels (COLMAP's continuous convention).
        coeffs: ``(k1, k2, p1, p2, k3, k4, k5, k6)`` (perspective) or ``(k1, k2, k3, k4)`` (fisheye).
    """

    model: str
    kind: LensKind
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    coeffs: tuple[float, ...]

    def __post_init__(self) -> None:
        if self.kind not in N_COEFFS or len(self.coeffs) != N_COEFFS[self.kind]:
            raise ValueError(f"a {self.kind} lens takes {N_COEFFS.get(self.kind)} coefficients, "
                             f"got {len(self.coeffs)}")

    @property
    def is_identity(self) -> bool:
        """True for a perspective lens whose coefficients are all 0 (a pinhole camera). A fisheye
        lens is never the identity: with zero coefficients it is the equidistant projection."""
        return self.kind == "perspective" and all(c == 0.0 for c in self.coeffs)

    def cv_matrix(self) -> np.ndarray:
        """(3, 3) float64 camera matrix in OpenCV's pixel convention (centres at integers)."""
        return _cv_matrix(self.fx, self.fy, self.cx, self.cy)

    def cv_coeffs(self) -> np.ndarray:
        """(N,) float64 distortion coefficients in OpenCV's order."""
        return np.asarray(self.coeffs, dtype=np.float64)


@dataclass(frozen=True)
class Pinhole:
    """The undistorted pinhole camera: size and intrinsics (COLMAP's continuous convention)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float


def _cv_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx - 0.5], [0.0, fy, cy - 0.5], [0.0, 0.0, 1.0]])


def distort(lens: Lens, xy: np.ndarray) -> np.ndarray:
    """Pixel positions (N, 2), continuous convention, of normalised undistorted points ``xy`` (N, 2)
    (``x = X / Z``, ``y = Y / Z`` in camera axes): the lens's forward map, by OpenCV."""
    import cv2

    pts = np.concatenate([np.asarray(xy, dtype=np.float64).reshape(-1, 2),
                          np.ones((len(xy), 1))], axis=1)
    zero = np.zeros(3)
    if lens.kind == "fisheye":
        out, _ = cv2.fisheye.projectPoints(pts[:, None, :], zero, zero, lens.cv_matrix(), lens.cv_coeffs())
    else:
        out, _ = cv2.projectPoints(pts, zero, zero, lens.cv_matrix(), lens.cv_coeffs())
    return out.reshape(-1, 2) + 0.5


def undistort_pixels(lens: Lens, uv: np.ndarray, where: str = "camera") -> np.ndarray:
    """Normalised undistorted points (N, 2) of pixel positions ``uv`` (N, 2, continuous convention):
    the inverse of :func:`distort`, by OpenCV's iterative solvers, checked by distorting back.

    Raises TrsplatError naming ``where`` if a point has no inverse (the coefficients bend the
    image border back on itself, or a fisheye ray is 90 degrees or more off axis).
    """
    import cv2

    src = (np.asarray(uv, dtype=np.float64).reshape(-1, 1, 2) - 0.5)
    criteria = (cv2.TERM_CRITERIA_COUNT | cv2.TERM_CRITERIA_EPS, 100, 1e-12)
    with np.errstate(all="ignore"):
        if lens.kind == "fisheye":
            xy = cv2.fisheye.undistortPoints(src, lens.cv_matrix(), lens.cv_coeffs(), criteria=criteria)
        else:
            xy = cv2.undistortPointsIter(src, lens.cv_matrix(), lens.cv_coeffs(), None, None, criteria)
        xy = xy.reshape(-1, 2)
        back = distort(lens, xy) if np.isfinite(xy).all() else np.full_like(xy, np.nan)
    miss = np.linalg.norm(back - np.asarray(uv, dtype=np.float64).reshape(-1, 2), axis=1)
    bad = ~(miss <= INVERSE_TOLERANCE_PX)
    if bad.any():
        i = int(np.argmax(bad))
        u, v = np.asarray(uv, dtype=np.float64).reshape(-1, 2)[i]
        raise TrsplatError(
            f"{where}: the {lens.model} distortion {lens.coeffs} cannot be inverted at pixel "
            f"({u:.1f}, {v:.1f}) of the {lens.width}x{lens.height} image (the model folds the image "
            f"back on itself there); check the camera's distortion coefficients"
        )
    return xy


def _border_pixels(width: int, height: int) -> dict[str, np.ndarray]:
    """Pixel centres along the four borders (COLMAP's UndistortCamera samples these)."""
    ys = np.arange(height) + 0.5
    xs = np.arange(width) + 0.5
    return {
        "left": np.stack([np.full_like(ys, 0.5), ys], axis=1),
        "right": np.stack([np.full_like(ys, width - 0.5), ys], axis=1),
        "top": np.stack([xs, np.full_like(xs, 0.5)], axis=1),
        "bottom": np.stack([xs, np.full_like(xs, height - 0.5)], axis=1),
    }


@functools.lru_cache(maxsize=64)
def pinhole_for(lens: Lens, where: str = "camera") -> Pinhole:
    """The pinhole camera ``lens`` is undistorted to, as COLMAP's undistorter chooses it.

    Focal lengths are kept. The borders of the distorted image are undistorted; the size is
    scaled per axis by ``1 / max_scale`` so that no output pixel falls outside the distorted
    image (``blank_pixels = 0``), clipped to [0.2, 2], and truncated to whole pixels; the
    principal point scales with the size. A lens without distortion keeps its camera.
    """
    if lens.is_identity:
        return Pinhole(lens.width, lens.height, lens.fx, lens.fy, lens.cx, lens.cy)
    fx, fy, cx, cy = lens.fx, lens.fy, lens.cx, lens.cy
    w, h = lens.width, lens.height
    x = {}
    for side, uv in _border_pixels(w, h).items():
        xy = undistort_pixels(lens, uv, where)
        x[side] = np.stack([fx * xy[:, 0] + cx, fy * xy[:, 1] + cy], axis=1)
    left_max = x["left"][:, 0].max()
    right_min = x["right"][:, 0].min()
    top_max = x["top"][:, 1].max()
    bottom_min = x["bottom"][:, 1].min()
    with np.errstate(divide="ignore"):
        max_scale_x = max(cx / (cx - left_max), (w - 0.5 - cx) / (right_min - cx))
        max_scale_y = max(cy / (cy - top_max), (h - 0.5 - cy) / (bottom_min - cy))
    if not (math.isfinite(max_scale_x) and math.isfinite(max_scale_y)) or max_scale_x <= 0 or max_scale_y <= 0:
        raise TrsplatError(
            f"{where}: the {lens.model} distortion {lens.coeffs} leaves no undistorted image "
            f"(the principal point ({cx}, {cy}) is not inside the undistorted borders)"
        )
    scale_x = min(max(1.0 / max_scale_x, MIN_SCALE), MAX_SCALE)
    scale_y = min(max(1.0 / max_scale_y, MIN_SCALE), MAX_SCALE)
    new_w = int(max(1.0, scale_x * w))
    new_h = int(max(1.0, scale_y * h))
    return Pinhole(new_w, new_h, fx, fy, cx * new_w / w, cy * new_h / h)


@functools.lru_cache(maxsize=4)
def undistortion_maps(lens: Lens, pinhole: Pinhole) -> tuple[np.ndarray, np.ndarray]:
    """(map_x, map_y), float32 (pinhole.height, pinhole.width): for each pixel of the pinhole image,
    where to sample the distorted image (OpenCV's pixel convention, for ``cv2.remap``)."""
    import cv2

    new_k = _cv_matrix(pinhole.fx, pinhole.fy, pinhole.cx, pinhole.cy)
    size = (pinhole.width, pinhole.height)
    if lens.kind == "fisheye":
        map_x, map_y = cv2.fisheye.initUndistortRectifyMap(
            lens.cv_matrix(), lens.cv_coeffs(), np.eye(3), new_k, size, cv2.CV_32FC1)
    else:
        map_x, map_y = cv2.initUndistortRectifyMap(
            lens.cv_matrix(), lens.cv_coeffs(), np.eye(3), new_k, size, cv2.CV_32FC1)
    map_x.setflags(write=False)
    map_y.setflags(write=False)
    return map_x, map_y


def undistort_array(image: np.ndarray, lens: Lens, pinhole: Pinhole) -> np.ndarray:
    """Resample a distorted image (H, W[, C]) (uint8, uint16 or float32, C <= 4) into the pinhole
    camera: bilinear, output pixels that fall a fraction of a pixel outside the image repeat the
    border pixel. Returns (pinhole.height, pinhole.width[, C]) of the same dtype."""
    import cv2

    if image.shape[:2] != (lens.height, lens.width):
        raise ValueError(f"image is {image.shape[1]}x{image.shape[0]}, lens is {lens.width}x{lens.height}")
    map_x, map_y = undistortion_maps(lens, pinhole)
    out = cv2.remap(np.ascontiguousarray(image), map_x, map_y, interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    return out.reshape((pinhole.height, pinhole.width) + image.shape[2:])
