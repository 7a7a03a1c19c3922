"""Atomic file writes: write to a temporary file in the same folder, fsync, then rename.

Every failure to write (a read-only folder, a full disk, a path that is a file where a folder is
needed) becomes one :class:`TrsplatError` naming the file; the previous version of the file, if
any, is left as it was. Files get the permissions of an ordinary ``open`` (0666 minus the umask),
not ``mkstemp``'s 0600.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from trsplat.errors import TrsplatError

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_error(path: Path, exc: OSError) -> TrsplatError:
    """The one-line message for an OSError while writing ``path``."""
    if exc.errno == errno.ENOSPC:
        return TrsplatError(f"{path}: the disk is full; the previous version of the file is kept")
    return TrsplatError(f"{path}: cannot write ({exc.strerror or exc})")


def ensure_dir(path: str | os.PathLike) -> Path:
    """``mkdir -p path`` with a one-line error (e.g. a file stands where a folder is needed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TrsplatError(f"{path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrsplatError(f"{path}: cannot create the folder ({exc.strerror or exc})") from None
    return path


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if path.is_dir():
        raise TrsplatError(f"{path}: is a folder, expected a file")
    ensure_dir(path.parent)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    except RuntimeError as exc:  # torch.save reports a failed write (e.g. a full disk) as RuntimeError
        if "write" in str(exc).lower() or "file" in str(exc).lower():
            raise TrsplatError(f"{path}: cannot write ({str(exc).splitlines()[0]}); "
                               f"the previous version of the file is kept") from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, data: Any) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``folder`` and its
    subfolders (only call this while no other process writes there); returns what was removed."""
    removed = []
    for tmp in Path(folder).rglob(f".*{TEMP_SUFFIX}"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed
