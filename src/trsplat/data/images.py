"""Image loading: decode, composite alpha on a background, downscale, check against the camera.

Every image becomes a float32 tensor of shape (H, W, 3) with values in [0, 1]:

* RGB images are used as they are; grayscale (``L``, ``I;16``, ...) is replicated to 3 channels;
  palette images are expanded.
* Images with an alpha channel (RGBA, LA, palette with transparency) are composited on the
  scene background, ``rgb * a + bg * (1 - a)``, before any resizing (PIL ``alpha_composite``
  in 8 bits; the result is rounded to 8 bits, as INRIA 3DGS also does). The background is
  rounded to 8 bits for this (exact for white and black).
* ``--downscale K`` (K >= 1, int or float) resizes each image once, on load, with PIL's ``BOX``
  filter, per channel in float32 (not re-quantised to 8 bits). For an integer K that divides
  the size this is the exact average of K x K pixel blocks (the cleanest anti-aliased
  downsampling). INRIA 3DGS uses PIL's default filter on 8-bit images instead. The target size is always taken from
  ``camera.scaled(1 / K)`` so image and camera sizes agree exactly (``round(W / K)`` x
  ``round(H / K)``). Loading costs ~20 ms per 800x800 RGBA PNG (mostly PNG decoding).
* EXIF orientation tags are ignored (COLMAP also uses the stored pixel order).

Every failure the user can fix (missing file, undecodable or truncated image, size that
disagrees with the camera) raises :class:`~trsplat.errors.TrsplatError` naming the file.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from trsplat.camera import Camera
from trsplat.errors import TrsplatError

Background = tuple[float, float, float]

#: Named backgrounds accepted by :func:`parse_background`.
BACKGROUNDS: dict[str, Background] = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}

# Errors PIL raises for unreadable or malformed files (UnidentifiedImageError is an OSError).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass
class ImageView:
    """A camera at the image file's native resolution, and the path of that image file.

    Produced by the dataset readers (COLMAP, transforms.json) before any pixel is decoded.
    """

    camera: Camera
    image_path: Path


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


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(width, height) of an image file, read from its header only (no pixel decoding)."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        raise TrsplatError(f"{path}: image file not found") from None
    except _PIL_ERRORS as exc:
        raise TrsplatError(f"{path}: not a readable image ({exc})") from None


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


def _read(
    path: Path,
    background: Background,
    expected: tuple[int, int] | None,
    target: tuple[int, int] | None,
    label: str = "",
) -> torch.Tensor:
    """Decode ``path``, check its size against ``expected`` (W, H), composite, resize to
    ``target`` (W, H) with BOX, and return float32 (H, W, 3) in [0, 1].

    8-bit images (the usual case) are composited by PIL in 8 bits (rounded to 8 bits, as INRIA
    3DGS also does) and resized per channel in float32 (PIL mode "F"), so downscaled pixels are
    not re-quantised; 16-bit and float grayscale images are processed in float32 throughout.
    """
    try:
        with Image.open(path) as im:
            w, h = im.size
            if expected is not None and (w, h) != tuple(expected):
                raise TrsplatError(
                    f"{path}: image is {w}x{h} pixels but its camera{label} is "
                    f"{expected[0]}x{expected[1]} (WxH)"
                )
            tw, th = (w, h) if target is None else (int(target[0]), int(target[1]))
            if tw > w or th > h:
                raise TrsplatError(f"{path}: image is {w}x{h}, cannot downscale it to {tw}x{th}")
            im.load()
            if im.mode.startswith("I;16") or im.mode in ("I", "F"):
                scale = 1.0 if im.mode == "F" else 1.0 / 65535.0
                gray = np.clip(np.asarray(im).astype(np.float32) * np.float32(scale), 0.0, 1.0)
                arr = np.repeat(gray[:, :, None], 3, axis=2)
                if (tw, th) != (w, h):
                    arr = _resize_box(arr, tw, th)
                return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
            rgb = _to_rgb8(im, background)
            if (tw, th) == (w, h):
                arr = np.asarray(rgb, dtype=np.uint8).astype(np.float32)
            else:  # resize each channel in float32 (PIL "F"): one rounding-free pass
                arr = np.stack(
                    [np.asarray(c.convert("F").resize((tw, th), Image.Resampling.BOX))
                     for c in rgb.split()],
                    axis=2,
                )
    except TrsplatError:
        raise
    except FileNotFoundError:
        raise TrsplatError(f"{path}: image file not found") from None
    except _PIL_ERRORS as exc:
        raise TrsplatError(f"{path}: corrupt or unreadable image ({exc})") from None
    arr /= np.float32(255.0)
    return torch.from_numpy(np.clip(arr, 0.0, 1.0, out=arr))


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
    return _read(Path(path), background, None, size)


def load_view(
    view: ImageView, *, downscale: float = 1.0, background: Background = (1.0, 1.0, 1.0)
) -> tuple[Camera, torch.Tensor]:
    """Decode ``view.image_path``, check it against ``view.camera`` and downscale both.

    Returns ``(camera, image)`` where ``camera = view.camera.scaled(1 / downscale)`` (or the
    camera itself for downscale 1) and ``image`` is float32 (camera.height, camera.width, 3).

    Raises TrsplatError if the image's size differs from the camera's native size.
    """
    cam = view.camera
    label = f" {cam.name!r}" if cam.name else ""
    out = cam if downscale == 1.0 else cam.scaled(1.0 / downscale)
    image = _read(
        view.image_path, background, (cam.width, cam.height), (out.width, out.height), label
    )
    return out, image


def default_workers() -> int:
    """Threads used to decode images (PIL and numpy release the GIL while working)."""
    return max(1, min(8, os.cpu_count() or 1))


def load_views(
    views: Sequence[ImageView],
    *,
    downscale: float = 1.0,
    background: Background = (1.0, 1.0, 1.0),
    workers: int | None = None,
) -> list[tuple[Camera, torch.Tensor]]:
    """:func:`load_view` for every view, in order, using a thread pool.

    The first failing view (in input order) raises its TrsplatError.
    """
    downscale = check_downscale(downscale)
    n_workers = default_workers() if workers is None else max(1, int(workers))
    if n_workers == 1 or len(views) <= 1:
        return [load_view(v, downscale=downscale, background=background) for v in views]
    with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="trsplat-img") as pool:
        futures = [
            pool.submit(load_view, v, downscale=downscale, background=background) for v in views
        ]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
