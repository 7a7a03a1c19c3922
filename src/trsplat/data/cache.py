"""Where undistorted images are kept: a cache folder inside the capture, or the user's cache.

Layout (docs/captures.md):

* ``<capture>/.trsplat_cache/undistorted-<lens key>/`` holds the images of one distorted camera
  (one :class:`~trsplat.data.undistort.Lens`) resampled into its pinhole camera, and
  ``cameras.json`` (the lens, the pinhole camera and the resampling, for the record). The lens key
  hashes the lens, the pinhole camera, the resampling method and :data:`FORMAT_VERSION`.
* Each image is ``<its path inside the capture>.<file key>.npy``: the undistorted pixels as a raw
  numpy array (uint8 or uint16, as decoded), which loads ~10x faster than a PNG and 5x faster
  than the JPEG it came from, at the cost of disk space (height x width x channels bytes, 6 MB
  for a 1080x1920 RGB image). The file key hashes the source file's resolved path, size and
  modification time, so an edited image is undistorted again. An unreadable entry is remade.
* If the capture folder cannot be written, the same layout lives in
  ``$XDG_CACHE_HOME/trsplat/captures/<capture name>-<hash of its path>/`` (``~/.cache`` when
  ``XDG_CACHE_HOME`` is unset).

Every file is written atomically (:func:`trsplat.io_utils.atomic_write`), so an interrupted run
never leaves a half-written image, and concurrent runs on one capture are safe. Old entries are
never removed: delete ``.trsplat_cache`` to reclaim the space.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

from trsplat.data.undistort import INTERPOLATION, MAX_SCALE, MIN_SCALE, Lens, Pinhole
from trsplat.io_utils import atomic_write, write_json

CACHE_DIRNAME = ".trsplat_cache"
#: Bump when the cached images would change for the same inputs.
FORMAT_VERSION = 2


def _digest(text: str, n: int) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/trsplat`` (``~/.cache/trsplat`` when the variable is unset or empty)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "trsplat"


def folder_is_writable(folder: Path) -> bool:
    """True if ``folder`` exists or can be created, and a file can be created in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
        return True
    except OSError:
        return False


def lens_key(lens: Lens, pinhole: Pinhole) -> str:
    """16 hex digits identifying the undistortion of ``lens`` into ``pinhole``."""
    record = {"format": FORMAT_VERSION, "lens": dataclasses.asdict(lens),
              "pinhole": dataclasses.asdict(pinhole), "interpolation": INTERPOLATION}
    return _digest(json.dumps(record, sort_keys=True), 16)


class UndistortCache:
    """The undistorted-image cache of one capture folder (created on first use)."""

    def __init__(self, capture_dir: str | os.PathLike) -> None:
        self.capture_dir = Path(capture_dir).expanduser().resolve()
        self._root: Path | None = None
        self._lock = threading.Lock()

    @property
    def root(self) -> Path:
        """``<capture>/.trsplat_cache``, or the user cache's folder for this capture."""
        with self._lock:
            if self._root is None:
                local = self.capture_dir / CACHE_DIRNAME
                if folder_is_writable(local):
                    self._root = local
                else:
                    name = f"{self.capture_dir.name}-{_digest(str(self.capture_dir), 12)}"
                    self._root = user_cache_dir() / "captures" / name
            return self._root

    def folder(self, lens: Lens, pinhole: Pinhole) -> Path:
        """The folder of one lens's undistorted images; writes its ``cameras.json`` once."""
        folder = self.root / f"undistorted-{lens_key(lens, pinhole)}"
        record = folder / "cameras.json"
        if not record.is_file():
            write_json(record, {
                "format": FORMAT_VERSION,
                "distorted": dataclasses.asdict(lens),
                "pinhole": dataclasses.asdict(pinhole),
                "interpolation": INTERPOLATION,
                "policy": f"COLMAP image_undistorter defaults: focal lengths kept, no blank pixels, "
                          f"scale clipped to [{MIN_SCALE}, {MAX_SCALE}]",
            })
        return folder

    def image_path(self, lens: Lens, pinhole: Pinhole, source: Path) -> Path:
        """Where the undistorted version of ``source`` is (or will be) kept."""
        source = Path(source).resolve()
        st = source.stat()
        key = _digest(f"{source}|{st.st_size}|{st.st_mtime_ns}", 12)
        try:
            rel = source.relative_to(self.capture_dir)
        except ValueError:
            rel = Path("_outside") / source.name
        return self.folder(lens, pinhole) / rel.parent / f"{rel.name}.{key}.npy"

    @staticmethod
    def write(path: Path, data: bytes) -> None:
        """Write ``data`` to ``path`` atomically (creating its folder)."""
        with atomic_write(path) as tmp:
            tmp.write_bytes(data)
