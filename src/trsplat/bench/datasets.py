"""Where the benchmarks' datasets live: ``--data-root`` or the ``TRSPLAT_DATA`` environment variable.

The study presets name their captures relative to that folder (``${data_root}/colmap_bird``), and
``trsplat bench render`` / ``bench iteration`` default to its ``nerf_synthetic_chair``. There is no
built-in location (docs/optimizer_study.md, "How to run").
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "TRSPLAT_DATA"
CHAIR = "nerf_synthetic_chair"


def datasets_root(option: str | os.PathLike | None = None) -> Path | None:
    """``option`` (a ``--data-root``), else ``$TRSPLAT_DATA``, else None."""
    value = option if option is not None else os.environ.get(DATA_ENV) or None
    return None if value is None else Path(value).expanduser()


def default_capture(name: str = CHAIR) -> Path:
    """``$TRSPLAT_DATA/name``; while the variable is unset, the literal path ``$TRSPLAT_DATA/name``,
    which does not exist, so the error that follows names the variable."""
    return (datasets_root() or Path("$" + DATA_ENV)) / name
