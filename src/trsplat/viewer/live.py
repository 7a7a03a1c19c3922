"""The live viewer of ``trsplat train --viewer``: a :class:`~trsplat.training.Hook` that serves the
page of ``trsplat view`` from the training process and shows the current Gaussians, the
iteration, the loss and PSNR, with a button that pauses and resumes training.

Cost (measured in docs/viewer.md): with no page open, ``on_step`` reads a counter and returns.
With a page open, the status line is updated at most twice a second, and the Gaussians are copied
(one tensor copy on the training thread) at most every ``every`` seconds, or less often when the
worker thread took longer than ``every / 20`` to turn the previous copy into splats; the
conversion and the sending run off the training thread. Pausing blocks ``on_step`` on a
:class:`threading.Event` (the paused time is not counted in train seconds); the last page to
close resumes training, and Ctrl-C stops a paused run as a running one.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from trsplat.training.hooks import Hook

if TYPE_CHECKING:
    from trsplat.training.trainer import Trainer
    from trsplat.viewer.app import SceneViewer

STATUS_EVERY = 0.5
"""Seconds between updates of the status line while a page is open."""
MAX_SHARE = 0.05
"""The splat updates may keep the worker busy at most this share of the time."""


def _stop_requested() -> bool:
    """Whether Ctrl-C / SIGTERM asked the training loop to stop (its handler's ``requested``)."""
    handler = signal.getsignal(signal.SIGINT)
    return bool(getattr(getattr(handler, "__self__", None), "requested", False))


class LiveViewer(Hook):
    """Serves the viewer at ``host:port`` while training (see the module docstring)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8080, every: float = 2.0,
                 renderer: str = "browser", resolution: int = 256, max_splats: int | None = None) -> None:
        self.options = dict(host=host, port=port, renderer=renderer, resolution=resolution, max_splats=max_splats)
        self.every = every
        self.viewer: SceneViewer | None = None
        self.running = threading.Event()
        self.running.set()
        self.wanted = threading.Event()  # a page opened: send the Gaussians at the next step
        self.next_push = 0.0
        self.next_status = 0.0
        self.last: tuple[int, float, float] = (0, float("nan"), float("nan"))
        self.last_eval: dict[str, Any] | None = None
        self.iters = 0

    def on_start(self, trainer: "Trainer") -> None:
        from trsplat.viewer.app import SceneViewer

        scene = trainer.scene
        self.iters = trainer.cfg.iters
        self.viewer = SceneViewer(title=f"trsplat train {scene.name}", backend=trainer.backend,
                                  background=tuple(float(c) for c in scene.background), **self.options)
        self.last = (trainer.state.iteration, float("nan"), float("nan"))
        self.last_eval = trainer.state.evals[-1] if trainer.state.evals else None
        self.viewer.set_cameras(list(scene.train), list(scene.test))
        self.viewer.connect_callbacks.append(self.wanted.set)
        self.viewer.server.on_client_disconnect(lambda _: self._last_page_closed())
        gui = self.viewer.server.gui
        with gui.add_folder("Training", order=5):
            self.pause = gui.add_button("pause training")
        self.pause.on_click(lambda _: self._toggle())
        self._push(trainer)
        print(f"trsplat: live viewer at {self.viewer.url}", file=sys.stderr, flush=True)

    def on_step(self, trainer: "Trainer", iteration: int, loss: float, psnr: float) -> None:
        self.last = (iteration, loss, psnr)
        viewer = self.viewer
        if viewer is None or viewer.n_clients == 0:
            return
        now = time.monotonic()
        if self.wanted.is_set() or (now >= self.next_push and viewer.worker.idle()):
            self._push(trainer)
        elif now >= self.next_status:
            self._status()
        if not self.running.is_set():
            self._paused(trainer)

    def on_eval(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.last_eval = record
        if self.viewer is not None and self.viewer.n_clients:
            self._push(trainer)

    def on_close(self, trainer: "Trainer") -> None:
        self.running.set()
        if self.viewer is not None:
            self.viewer.close()
            self.viewer = None

    # -- helpers --------------------------------------------------------------------------------
    def _push(self, trainer: "Trainer") -> None:
        """Hand a copy of the current Gaussians to the viewer's worker."""
        self.wanted.clear()
        iteration = self.last[0]
        snapshot = trainer.gaussians.detach().clone()
        self.viewer.set_gaussians(snapshot, trainer.sh_degree(max(iteration, 1)),
                                  caption=self._caption())
        now = time.monotonic()
        self.next_push = now + max(self.every, self.viewer.worker.busy_seconds / MAX_SHARE)
        self._status(now)

    def _caption(self) -> str:
        iteration, loss, psnr = self.last
        text = f"**iteration {iteration:,} / {self.iters:,}**"
        if loss == loss:  # not NaN: a step has run in this process
            text += f" · loss {loss:.4f} · train PSNR {psnr:.2f} dB"
        if self.last_eval is not None:
            e = self.last_eval
            text += f"  \ntest PSNR {e['psnr']:.2f} dB at iteration {e['iteration']:,}"
        if not self.running.is_set():
            text += "  \n**paused**"
        return text

    def _status(self, now: float | None = None) -> None:
        self.next_status = (now or time.monotonic()) + STATUS_EVERY
        viewer = self.viewer
        viewer.caption = self._caption()
        total = len(viewer.gaussians) if viewer.gaussians is not None else 0
        viewer.set_status(viewer.status_text(total))

    def _toggle(self) -> None:
        if self.running.is_set():
            self.running.clear()
            self.pause.label = "resume training"
        else:
            self.running.set()
            self.pause.label = "pause training"

    def _last_page_closed(self) -> None:
        if self.viewer is not None and self.viewer.n_clients == 0 and not self.running.is_set():
            self.running.set()
            self.pause.label = "pause training"

    def _paused(self, trainer: "Trainer") -> None:
        """Wait until resumed (button, last page closed, or Ctrl-C), showing the paused state."""
        self._push(trainer)
        while not self.running.wait(0.2):
            if _stop_requested():
                break
            if self.wanted.is_set():
                self._push(trainer)
        self._status()
