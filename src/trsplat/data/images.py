"""Image loading: decode, orient, undistort, composite alpha on a background, downscale, check.

Every image becomes a float32 tensor of shape (H, W, 3) with values in [0, 1]:

* 8-bit RGB images are used as they are; grayscale (``L``, ``I;16``, ...) is replicated to 3
  channels; palette, CMYK and other modes are converted to RGB.
* 16-bit images (grey or colour, PNG or TIFF) keep their 16 bits: values are ``v / 65535``, read
  as display (sRGB-encoded) values like 8-bit ones, not as linear radiance. PIL would truncate
  16-bit colour to 8 bits, so those are decoded by OpenCV.
* Images with an alpha channel (RGBA, LA, palette with transparency) are composited on the
  scene background, ``rgb * a + bg * (1 - a)``, before any resizing. 8-bit images are composited
  by PIL's ``alpha_composite`` in 8 bits (the result is rounded to 8 bits, as INRIA 3DGS also
  does; the background is rounded to 8 bits for this, exact for white and black); 16-bit colour
  images in float32.
* ``--downscale K`` (K >= 1, int or float) resizes each image once, on load, with PIL's ``BOX``
  filter, per channel in float32 (not re-quantised to 8 bits). For an integer K that divides
  the size this is the exact average of K x K pixel blocks (the cleanest anti-aliased
  downsampling). INRIA 3DGS uses PIL's default filter on 8-bit images instead. The target size is always taken from
  ``camera.scaled(1 / K)`` so image and camera sizes agree exactly (``round(W / K)`` x
  ``round(H / K)``). Loading costs ~20 ms per 800x800 RGBA PNG (mostly PNG decoding).
* EXIF orientation: the stored pixel order is used when its size is the camera's (COLMAP,
  instant-ngp and nerfstudio all ignore the tag); the tag is applied only when the camera has the
  rotated size (orientations 5-8, a tool that did apply it made the camera).
* A view with a :class:`~trsplat.data.undistort.Lens` is undistorted first, through the capture's
  :class:`~trsplat.data.cache.UndistortCache` (the source image's size is checked against the
  lens; the cached image is then loaded like any other, at the pinhole camera's size).

Every failure the user can fix (missing file, undecodable or truncated image, size that
disagrees with the camera) raises :class:`~trsplat.errors.TrsplatError` naming the file.
:func:`load_views` also warns (:func:`trsplat.errors.warn`, one line) once per capture about
greyscale and 16-bit images and about downscaled images of only a few pixels.
"""

from __future__ import annotations

import io
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image

from trsplat.camera import Camera
from trsplat.data.cache import UndistortCache
from trsplat.data.undistort import Lens, pinhole_for, undistort_array
from trsplat.errors import TrsplatError, warn

Background = tuple[float, float, float]

#: Named backgrounds accepted by :func:`parse_background`.
BACKGROUNDS: dict[str, Background] = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}

#: A downscaled image with a side below this many pixels is refused; below SMALL_SIDE_PX, warned.
MIN_SIDE_PX = 2
SMALL_SIDE_PX = 32

# Errors PIL raises for unreadable or malformed files (UnidentifiedImageError is an OSError).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)

# Formats users have that PIL cannot decode, with what to do about them.
_UNSUPPORTED = {
    ".exr": "HDR (OpenEXR) images are not supported; convert them to 8- or 16-bit PNG",
    ".hdr": "HDR (Radiance) images are not supported; convert them to 8- or 16-bit PNG",
    ".pfm": "float PFM images are not supported; convert them to 8- or 16-bit PNG",
    ".heic": "HEIC images are not supported; convert them to JPEG or PNG",
    ".heif": "HEIF images are not supported; convert them to JPEG or PNG",
    ".avif": "AVIF images are not supported; convert them to JPEG or PNG",
    ".dng": "raw (DNG) images are not supported; develop them to JPEG or PNG",
}

_EXIF_ORIENTATION = 0x0112
# EXIF orientations that swap width and height, as PIL transposes (what ImageOps.exif_transpose does).
_SWAPPING = {5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270,
             7: Image.Transpose.TRANSVERSE, 8: Image.Transpose.ROTATE_90}


@dataclass
class ImageView:
    """A camera and the image file it sees, before any pixel is decoded.

    Produced by the dataset readers (COLMAP, transforms.json). ``camera`` is the pinhole camera
    trsplat trains with. ``lens`` is None for a pinhole capture (``camera`` is then at the image
    file's native resolution); otherwise it is the distorted camera of the image file, and
    ``camera`` is its undistorted pinhole camera (:func:`~trsplat.data.undistort.pinhole_for`).
    """

    camera: Camera
    image_path: Path
    lens: Lens | None = None


class ImageInfo(NamedTuple):
    """What :func:`load_views` warns about: a greyscale image, more than 8 bits per channel."""

    grey: bool
    deep: bool


def parse_background(background: str | Sequence[float]) -> Background:
    """``"white"`` / ``"black"`` (case-insensitive) or an RGB triple in [0, 1] -> RGB triple."""
    if isinstance(background, str):
        key = background.strip().lower()
        if key in BACKGROUNDS:
            return BACKGROUNDS[key]
        raise TrsplatError(f"--background {background!r}: expected 'white' or 'black'")
    try:
        values = tuple(float(v) for v in background)
    except (TypeError, ValueError):
        raise TrsplatError(f"background {background!r}: expected 'white', 'black' or 3 numbers") from None
    if len(values) != 3 or not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
        raise TrsplatError(f"background {background!r}: expected 3 numbers in [0, 1]")
    return values  # type: ignore[return-value]


def check_downscale(downscale: float) -> float:
    """Validate ``--downscale``: a finite number >= 1. Returns it as a float."""
    try:
        k = float(downscale)
    except (TypeError, ValueError):
        raise TrsplatError(f"--downscale {downscale!r}: expected a number >= 1") from None
    if not math.isfinite(k) or k < 1.0:
        raise TrsplatError(f"--downscale {downscale!r}: expected a number >= 1 (1 = full resolution)")
    return k


def _unreadable(path: Path, exc: BaseException) -> TrsplatError:
    hint = _UNSUPPORTED.get(path.suffix.lower())
    if hint is not None:
        return TrsplatError(f"{path}: {hint}")
    return TrsplatError(f"{path}: corrupt or unreadable image ({exc})")


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file as stored, read from its header only (no decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        raise TrsplatError(f"{path}: image file not found") from None
    except _PIL_ERRORS as exc:
        hint = _UNSUPPORTED.get(path.suffix.lower())
        raise TrsplatError(f"{path}: {hint}" if hint else f"{path}: not a readable image ({exc})") from None


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a malformed EXIF block is no reason to refuse the pixels
        return 1


def _fit(im: Image.Image, path: Path, expected: tuple[int, int] | None, label: str) -> Image.Transpose | None:
    """None if the stored image has the ``expected`` (W, H); the EXIF transpose if only the
    oriented image has it; otherwise raise the size mismatch."""
    w, h = im.size
    if expected is None or (w, h) == tuple(expected):
        return None
    orientation = _orientation(im)
    if orientation in _SWAPPING and (h, w) == tuple(expected):
        return _SWAPPING[orientation]
    raise TrsplatError(
        f"{path}: image is {w}x{h} pixels but its camera{label} is "
        f"{expected[0]}x{expected[1]} (WxH)"
    )


def _transpose_array(arr: np.ndarray, op: Image.Transpose | None) -> np.ndarray:
    """``op`` (one of the width/height swapping transposes) applied to an (H, W, ...) array, as PIL does."""
    if op is None:
        return arr
    if op == Image.Transpose.TRANSPOSE:
        return arr.swapaxes(0, 1)
    if op == Image.Transpose.TRANSVERSE:
        return arr[::-1, ::-1].swapaxes(0, 1)
    if op == Image.Transpose.ROTATE_90:
        return np.rot90(arr, 1)
    if op == Image.Transpose.ROTATE_270:
        return np.rot90(arr, -1)
    raise ValueError(f"unexpected transpose {op}")


def _is_deep_colour(im: Image.Image) -> bool:
    """True for a 16-bit colour image, which PIL would decode truncated to 8 bits (check before load)."""
    if im.mode not in ("RGB", "RGBA"):
        return False
    for tile in getattr(im, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


def _decode_deep_colour(path: Path, op: Image.Transpose | None) -> np.ndarray:
    """A 16-bit colour image -> uint16 (H, W, 3|4), RGB(A) order, oriented by ``op``."""
    import cv2

    arr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise TrsplatError(f"{path}: cannot decode this 16-bit colour image (expected 16-bit RGB or RGBA)")
    order = [2, 1, 0] if arr.shape[2] == 3 else [2, 1, 0, 3]
    return np.ascontiguousarray(_transpose_array(arr[:, :, order], op))


def _is_grey(im: Image.Image) -> bool:
    return im.mode in ("1", "L", "LA", "La", "I", "F") or im.mode.startswith("I;16")


def _to_rgb8(im: Image.Image, background: Background) -> Image.Image:
    """A decoded PIL image -> 8-bit RGB, alpha composited on ``background`` (rounded to 8 bits)."""
    bands = im.getbands()
    if "A" in bands or "a" in bands or "transparency" in im.info:
        rgba = im if im.mode == "RGBA" else im.convert("RGBA")
        bg = tuple(int(round(c * 255.0)) for c in background) + (255,)
        return Image.alpha_composite(Image.new("RGBA", rgba.size, bg), rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _resize_box(arr: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize a float32 (H, W, 3) array to (height, width, 3) with PIL's BOX filter, per channel."""
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(arr[:, :, c])).resize(
                (width, height), Image.Resampling.BOX
            ),
            dtype=np.float32,
        )
        for c in range(arr.shape[2])
    ]
    return np.clip(np.stack(channels, axis=2), 0.0, 1.0)


def _composite_float(arr: np.ndarray, background: Background) -> np.ndarray:
    """float32 (H, W, 4) straight RGBA in [0, 1] -> (H, W, 3) composited on ``background``."""
    alpha = arr[:, :, 3:4]
    bg = np.asarray(background, dtype=np.float32)
    return arr[:, :, :3] * alpha + bg * (np.float32(1.0) - alpha)


def _from_deep(arr16: np.ndarray, background: Background, target: tuple[int, int]) -> torch.Tensor:
    """uint16 (H, W, 3|4) RGB(A) -> float32 (th, tw, 3) in [0, 1], composited and BOX-resized."""
    h, w = arr16.shape[:2]
    arr = arr16.astype(np.float32) * np.float32(1.0 / 65535.0)
    if arr.shape[2] == 4:
        arr = _composite_float(arr, background)
    if tuple(target) != (w, h):
        arr = _resize_box(arr, target[0], target[1])
    return torch.from_numpy(np.ascontiguousarray(np.clip(arr, 0.0, 1.0), dtype=np.float32))


def _target(path: Path, w: int, h: int, target: tuple[int, int] | None) -> tuple[int, int]:
    tw, th = (w, h) if target is None else (int(target[0]), int(target[1]))
    if tw > w or th > h:
        raise TrsplatError(f"{path}: image is {w}x{h}, cannot downscale it to {tw}x{th}")
    return tw, th


def _convert(
    im: Image.Image,
    path: Path,
    background: Background,
    expected: tuple[int, int] | None,
    target: tuple[int, int] | None,
    label: str,
) -> tuple[torch.Tensor, ImageInfo]:
    """The body of :func:`_read` for an opened (not yet loaded) PIL image."""
    op = _fit(im, path, expected, label)
    w, h = im.size if op is None else (im.size[1], im.size[0])
    tw, th = _target(path, w, h, target)
    if _is_deep_colour(im):
        return _from_deep(_decode_deep_colour(path, op), background, (tw, th)), ImageInfo(False, True)
    im.load()
    info = ImageInfo(grey=_is_grey(im), deep=im.mode.startswith("I;16") or im.mode in ("I", "F"))
    if op is not None:
        im = im.transpose(op)
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        scale = 1.0 if im.mode == "F" else 1.0 / 65535.0
        gray = np.clip(np.asarray(im).astype(np.float32) * np.float32(scale), 0.0, 1.0)
        arr = np.repeat(gray[:, :, None], 3, axis=2)
        if (tw, th) != (w, h):
            arr = _resize_box(arr, tw, th)
        return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)), info
    rgb = _to_rgb8(im, background)
    if (tw, th) == (w, h):
        arr = np.asarray(rgb, dtype=np.uint8).astype(np.float32)
    else:  # resize each channel in float32 (PIL "F"): one rounding-free pass
        arr = np.stack(
            [np.asarray(c.convert("F").resize((tw, th), Image.Resampling.BOX))
             for c in rgb.split()],
            axis=2,
        )
    arr /= np.float32(255.0)
    return torch.from_numpy(np.clip(arr, 0.0, 1.0, out=arr)), info


def _read(
    path: Path,
    background: Background,
    expected: tuple[int, int] | None,
    target: tuple[int, int] | None,
    label: str = "",
) -> tuple[torch.Tensor, ImageInfo]:
    """Decode ``path``, check its size against ``expected`` (W, H) (applying the EXIF orientation
    only if that makes it fit), composite, resize to ``target`` (W, H) with BOX, and return
    float32 (H, W, 3) in [0, 1] with the :class:`ImageInfo` of the file.

    8-bit images (the usual case) are composited by PIL in 8 bits (rounded to 8 bits, as INRIA
    3DGS also does) and resized per channel in float32 (PIL mode "F"), so downscaled pixels are
    not re-quantised; 16-bit and float images are processed in float32 throughout.
    """
    try:
        with Image.open(path) as im:
            return _convert(im, path, background, expected, target, label)
    except TrsplatError:
        raise
    except FileNotFoundError:
        raise TrsplatError(f"{path}: image file not found") from None
    except _PIL_ERRORS as exc:
        raise _unreadable(path, exc) from None


def _read_array(
    arr: np.ndarray,
    path: Path,
    background: Background,
    expected: tuple[int, int],
    target: tuple[int, int],
    label: str = "",
) -> tuple[torch.Tensor, ImageInfo]:
    """:func:`_read` for an array as :func:`decode_for_undistortion` makes it: the same result as
    reading a PNG that holds it. ``path`` is the source file, for messages."""
    h, w = arr.shape[:2]
    if (w, h) != tuple(expected):
        raise TrsplatError(f"{path}: undistorted image is {w}x{h} pixels but its camera{label} is "
                           f"{expected[0]}x{expected[1]} (WxH)")
    if arr.dtype == np.uint16 and arr.ndim == 3:
        return _from_deep(arr, background, _target(path, w, h, target)), ImageInfo(False, True)
    return _convert(Image.fromarray(arr), path, background, expected, target, label)


def decode_for_undistortion(path: Path, expected: tuple[int, int], label: str = "") -> np.ndarray:
    """Decode ``path`` to an array that can be resampled and cached losslessly: uint8 or uint16,
    (H, W) grey, (H, W, 3) RGB or (H, W, 4) straight RGBA; oriented and size-checked as in
    :func:`_read`. Float images become uint16 (``round(clip(v, 0, 1) * 65535)``)."""
    try:
        with Image.open(path) as im:
            op = _fit(im, path, expected, label)
            if _is_deep_colour(im):
                return _decode_deep_colour(path, op)
            im.load()
            if op is not None:
                im = im.transpose(op)
            mode = im.mode
            if mode.startswith("I;16"):
                return np.asarray(im).astype(np.uint16)
            if mode == "I":
                return np.clip(np.asarray(im), 0, 65535).astype(np.uint16)
            if mode == "F":
                return np.round(np.clip(np.asarray(im, dtype=np.float64), 0.0, 1.0) * 65535.0).astype(np.uint16)
            if mode in ("L", "RGB"):
                return np.asarray(im, dtype=np.uint8)
            bands = im.getbands()
            if "A" in bands or "a" in bands or "transparency" in im.info:
                return np.asarray(im.convert("RGBA"), dtype=np.uint8)
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except TrsplatError:
        raise
    except FileNotFoundError:
        raise TrsplatError(f"{path}: image file not found") from None
    except _PIL_ERRORS as exc:
        raise _unreadable(path, exc) from None


def _load_cached(path: Path) -> np.ndarray | None:
    """The array in a cache file, or None if it is missing or unreadable (then it is remade)."""
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return arr if arr.dtype in (np.uint8, np.uint16) and arr.ndim in (2, 3) else None


def undistorted_array(view: ImageView, cache: UndistortCache) -> np.ndarray:
    """The undistorted image of ``view`` (a view with a lens), from the cache or made and cached:
    uint8 or uint16, (H, W) or (H, W, 3|4), at the pinhole camera's size."""
    lens = view.lens
    assert lens is not None
    pinhole = pinhole_for(lens)
    target = cache.image_path(lens, pinhole, view.image_path)
    if target.is_file():
        cached = _load_cached(target)
        if cached is not None and cached.shape[:2] == (pinhole.height, pinhole.width):
            return cached
    label = f" {view.camera.name!r}" if view.camera.name else ""
    arr = decode_for_undistortion(view.image_path, (lens.width, lens.height), label)
    out = np.ascontiguousarray(undistort_array(arr, lens, pinhole))
    buffer = io.BytesIO()
    np.save(buffer, out, allow_pickle=False)
    try:
        cache.write(target, buffer.getvalue())
    except (OSError, TrsplatError) as exc:  # a cache that cannot be written costs time, not the run
        warn(f"{target}: cannot cache the undistorted image ({exc}); it is undistorted again next time")
    return out


def load_image(
    path: str | os.PathLike,
    *,
    background: Background = (1.0, 1.0, 1.0),
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Load one image as a float32 tensor (H, W, 3) in [0, 1], alpha composited on ``background``.

    If ``size = (width, height)`` is given and differs from the file's size, the image is
    downsampled to it with PIL's BOX filter (upsampling is refused).
    """
    return _read(Path(path), background, None, size)[0]


def _load_view(
    view: ImageView, downscale: float, background: Background, cache: UndistortCache | None
) -> tuple[Camera, torch.Tensor, ImageInfo]:
    cam = view.camera
    label = f" {cam.name!r}" if cam.name else ""
    out = cam if downscale == 1.0 else cam.scaled(1.0 / downscale)
    size, target = (cam.width, cam.height), (out.width, out.height)
    if view.lens is None:
        image, info = _read(view.image_path, background, size, target, label)
    else:
        arr = undistorted_array(view, cache or UndistortCache(view.image_path.parent))
        image, info = _read_array(arr, view.image_path, background, size, target, label)
    return out, image, info


def load_view(
    view: ImageView,
    *,
    downscale: float = 1.0,
    background: Background = (1.0, 1.0, 1.0),
    cache: UndistortCache | None = None,
) -> tuple[Camera, torch.Tensor]:
    """Decode ``view.image_path`` (undistorted first if the view has a lens), check it against
    ``view.camera`` and downscale both.

    Returns ``(camera, image)`` where ``camera = view.camera.scaled(1 / downscale)`` (or the
    camera itself for downscale 1) and ``image`` is float32 (camera.height, camera.width, 3).
    ``cache`` holds undistorted images (default: one in the image file's folder).

    Raises TrsplatError if the image's size differs from the camera's (or lens's) native size.
    """
    cam, image, _ = _load_view(view, downscale, background, cache)
    return cam, image


def default_workers() -> int:
    """Threads used to decode images (PIL and numpy release the GIL while working)."""
    return max(1, min(8, os.cpu_count() or 1))


def check_downscaled_sizes(views: Sequence[ImageView], downscale: float) -> None:
    """Refuse a ``--downscale`` that leaves an image under :data:`MIN_SIDE_PX` pixels on a side;
    warn (once) when it leaves images under :data:`SMALL_SIDE_PX`."""
    if downscale == 1.0 or not views:
        return
    scaled = [(v, v.camera.scaled(1.0 / downscale)) for v in views]
    view, small = min(scaled, key=lambda vc: min(vc[1].width, vc[1].height))
    side = min(small.width, small.height)
    size = f"{small.width}x{small.height} pixels (from {view.camera.width}x{view.camera.height})"
    if side < MIN_SIDE_PX:
        raise TrsplatError(f"{view.image_path}: --downscale {downscale:g} leaves an image of {size}; "
                           f"use a smaller --downscale")
    if side < SMALL_SIDE_PX:
        n = sum(min(c.width, c.height) < SMALL_SIDE_PX for _, c in scaled)
        warn(f"{view.image_path}: --downscale {downscale:g} leaves {n} of {len(views)} images under "
             f"{SMALL_SIDE_PX} pixels on a side (smallest {size}); too few pixels for a useful model")


def _warn_about(views: Sequence[ImageView], infos: Sequence[ImageInfo]) -> None:
    """One warning per kind of image worth knowing about (greyscale, 16-bit), naming the first."""
    for flag, what in (("grey", "greyscale; trained as grey RGB"),
                       ("deep", "16-bit (or float); values are read as v / 65535 like 8-bit display "
                                "values, not as linear radiance")):
        hits = [v.image_path for v, i in zip(views, infos) if getattr(i, flag)]
        if hits:
            warn(f"{hits[0]}: {len(hits)} of {len(views)} images are {what}")


def load_views(
    views: Sequence[ImageView],
    *,
    downscale: float = 1.0,
    background: Background = (1.0, 1.0, 1.0),
    workers: int | None = None,
    cache: UndistortCache | None = None,
) -> list[tuple[Camera, torch.Tensor]]:
    """:func:`load_view` for every view, in order, using a thread pool.

    The first failing view (in input order) raises its TrsplatError. Views with a lens are
    undistorted through ``cache`` (default: one in the first such image's folder). Warns once
    about greyscale and 16-bit images and tiny downscaled images (:func:`trsplat.errors.warn`).
    """
    downscale = check_downscale(downscale)
    check_downscaled_sizes(views, downscale)
    if cache is None:
        with_lens = [v for v in views if v.lens is not None]
        cache = UndistortCache(with_lens[0].image_path.parent) if with_lens else None
    n_workers = default_workers() if workers is None else max(1, int(workers))
    if n_workers == 1 or len(views) <= 1:
        loaded = [_load_view(v, downscale, background, cache) for v in views]
    else:
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="trsplat-img") as pool:
            futures = [pool.submit(_load_view, v, downscale, background, cache) for v in views]
            try:
                loaded = [f.result() for f in futures]
            except BaseException:
                for f in futures:
                    f.cancel()
                raise
    _warn_about(views, [info for _, _, info in loaded])
    return [(cam, image) for cam, image, _ in loaded]


def _same_view(a: ImageView, b: ImageView) -> bool:
    ca, cb = a.camera, b.camera
    return ((ca.width, ca.height, ca.fx, ca.fy, ca.cx, ca.cy) == (cb.width, cb.height, cb.fx, cb.fy, cb.cx, cb.cy)
            and a.lens == b.lens and torch.equal(ca.world_to_camera, cb.world_to_camera))


def drop_repeated_views(views: Sequence[ImageView], where: str | os.PathLike) -> list[ImageView]:
    """``views`` without repeats of one image file (compared by resolved path).

    A repeat with the same camera and pose is dropped with one warning for all of them; a repeat
    that disagrees (another pose or intrinsics for the same pixels) raises TrsplatError naming
    ``where`` and the image.
    """
    first: dict[Path, ImageView] = {}
    kept: list[ImageView] = []
    repeats: list[Path] = []
    for view in views:
        key = view.image_path.resolve()
        seen = first.get(key)
        if seen is None:
            first[key] = view
            kept.append(view)
        elif _same_view(seen, view):
            repeats.append(view.image_path)
        else:
            raise TrsplatError(
                f"{where}: image {view.image_path} appears twice ({seen.camera.name!r} and "
                f"{view.camera.name!r}) with different cameras or poses; remove one of them"
            )
    if repeats:
        warn(f"{where}: {len(repeats)} repeated frames dropped (same image, camera and pose; "
             f"first: {repeats[0]})")
    return kept
