"""The run folder: the only code that knows its file names.

A run folder ``DIR`` holds

- ``config.json``      the full :class:`~trsplat.config.TrainConfig` (what ``--resume`` reads back),
- ``metrics.json``     test metrics at each eval iteration and whether the run finished,
- ``checkpoint.pt``    parameters, optimiser state, RNG states, iteration, timers,
- ``point_cloud.ply``  the final Gaussians in the INRIA PLY layout,
- ``renders/iter_N/``  a few test renders next to their ground truth,
- ``curves.json``      the per-step training loss, train PSNR, train seconds and Gaussian count
                       (what the loss curve of ``curves.png`` needs; a resumed run keeps its start),
- ``curves.png``       loss, test metrics, Gaussian count and trust-region curves, redrawn at each eval,
- ``eval.json``        what ``trsplat eval`` recomputed, ``renders/SPLIT/`` what ``trsplat render`` drew.

Every file is written atomically (temporary name, fsync, rename).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from trsplat.config import TrainConfig
from trsplat.errors import TrsplatError
from trsplat.gaussians import Gaussians, save_ply
from trsplat.io_utils import atomic_write, ensure_dir, remove_stale_temporaries, save_torch, write_json

CHECKPOINT_FORMAT = 2
"""Version of ``checkpoint.pt``: 2 since the optimisers are ``torch.optim.Optimizer`` s."""


class RunDir:
    """A run folder at ``path`` (it need not exist yet)."""

    CONFIG = "config.json"
    METRICS = "metrics.json"
    CHECKPOINT = "checkpoint.pt"
    PLY = "point_cloud.ply"
    EVAL = "eval.json"
    CURVES = "curves.json"
    CURVES_PLOT = "curves.png"
    LOCK = ".lock"
    RENDERS = "renders"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config_path = self.path / self.CONFIG
        self.metrics_path = self.path / self.METRICS
        self.checkpoint_path = self.path / self.CHECKPOINT
        self.ply_path = self.path / self.PLY
        self.eval_path = self.path / self.EVAL
        self.curves_path = self.path / self.CURVES
        self.curves_plot_path = self.path / self.CURVES_PLOT

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # -- ownership ------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Create the folder if needed; a one-line error if it is a file or cannot be written."""
        ensure_dir(self.path)
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise TrsplatError(f"{self.path}: the folder is not writable")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder's lock while training (an OS file lock: released when the process ends,
        also on kill -9). A second training into the same folder stops with a one-line error.
        Temporaries left by a killed writer are removed once the lock is held."""
        self.check_writable()
        with open(self.path / self.LOCK, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TrsplatError(f"{self.path}: another trsplat process is training into this folder") from None
            remove_stale_temporaries(self.path)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def renders_dir(self, iteration: int | None = None, split: str | None = None) -> Path:
        """``renders/iter_N`` (training evals) or ``renders/SPLIT`` (``trsplat render``)."""
        return self.path / self.RENDERS / (f"iter_{iteration}" if iteration is not None else str(split))

    def has_checkpoint(self) -> bool:
        return self.checkpoint_path.is_file()

    # -- config and metrics -----------------------------------------------------------------
    def write_config(self, cfg: TrainConfig) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_json(self.config_path, cfg.to_dict())

    def read_config(self) -> TrainConfig:
        """The run's config; a one-line error when it is missing or unreadable."""
        return TrainConfig.from_dict(self._read_json(self.config_path, required=True))

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.metrics_path, metrics)

    def read_metrics(self) -> dict[str, Any] | None:
        """``metrics.json``, or None where there is none (a corrupt file is an error)."""
        return self._read_json(self.metrics_path, required=False)

    def status(self, iters: int) -> str:
        """``"finished"`` (last eval at ``iters`` and the final PLY written, which ``metrics.json``
        records as ``"finished": true``, so a folder reduced to ``metrics.json`` and ``config.json``,
        as committed under ``benchmarks/results/``, stays finished), ``"interrupted"`` (a
        checkpoint to resume from) or ``"missing"``. An unreadable ``metrics.json`` counts as none."""
        try:
            metrics = self.read_metrics() or {}
        except TrsplatError:
            metrics = {}
        last = max((e.get("iteration", 0) for e in metrics.get("evals") or []), default=0)
        if last == iters and (bool(metrics.get("finished")) or self.ply_path.is_file()):
            return "finished"
        return "interrupted" if self.has_checkpoint() else "missing"

    def write_curves(self, curves: dict[str, Any]) -> None:
        """``curves.json``, compact (one training step is a few numbers in each column)."""
        with atomic_write(self.curves_path) as tmp:
            tmp.write_text(json.dumps(curves, separators=(",", ":")) + "\n")

    def read_curves(self) -> dict[str, Any] | None:
        """``curves.json``, or None where there is none (runs of earlier versions)."""
        return self._read_json(self.curves_path, required=False)

    # -- checkpoint and PLY -----------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        save_torch(self.checkpoint_path, {"format": CHECKPOINT_FORMAT, **state})

    def load_checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict; a one-line error when it is missing or unreadable. Checkpoints of
        earlier formats still load: their parameters and iteration serve eval, render and export."""
        if not self.has_checkpoint():
            raise TrsplatError(f"{self.path}: not a trsplat run folder (no {self.CHECKPOINT})")
        try:
            return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        except Exception as exc:
            raise TrsplatError(f"{self.checkpoint_path}: cannot read checkpoint ({exc})") from None

    def save_ply(self, gaussians: Gaussians) -> None:
        save_ply(gaussians, self.ply_path)

    # -- helpers ------------------------------------------------------------------------------
    def _read_json(self, path: Path, *, required: bool) -> Any:
        if not path.is_file():
            if required:
                raise TrsplatError(f"{self.path}: not a trsplat run folder (no {path.name})")
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TrsplatError(f"{path}: cannot read ({exc})") from None
