"""Hooks: code the training loop calls at fixed points (progress, logging, a viewer).

Subclass :class:`Hook` and override what you need; pass instances as ``Trainer(..., hooks=[...])``.
Hooks observe; they must not change parameters (that is a strategy's job).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from trsplat.errors import warn

if TYPE_CHECKING:
    from trsplat.training.trainer import Trainer


class Hook:
    """No-op base class. ``on_close`` runs on every exit, also after an error or Ctrl-C."""

    def on_start(self, trainer: "Trainer") -> None:
        pass

    def on_step(self, trainer: "Trainer", iteration: int, loss: float, psnr: float) -> None:
        """After optimiser step ``iteration``: the step's training loss and train-image PSNR."""

    def on_eval(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        """After an evaluation: the record appended to ``metrics.json``."""

    def on_finish(self, trainer: "Trainer", metrics: dict[str, Any]) -> None:
        """After the final PLY and metrics are written."""

    def on_close(self, trainer: "Trainer") -> None:
        pass


class StartWarning(Hook):
    """Prints a one-line warning when the loop starts: after the options were checked and the data
    loaded, so a run that fails before training prints only its error."""

    def __init__(self, message: str) -> None:
        self.message = message

    def on_start(self, trainer: "Trainer") -> None:
        warn(self.message)


class ProgressBar(Hook):
    """A tqdm bar with smoothed loss and train PSNR, and one line per evaluation."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.loss_ema: float | None = None
        self.psnr_ema: float | None = None

    def on_start(self, trainer: "Trainer") -> None:
        self.bar = tqdm(total=trainer.cfg.iters, initial=trainer.state.iteration, desc=f"train {trainer.scene.name}",
                        unit="it", dynamic_ncols=True, mininterval=0.5)

    def on_step(self, trainer: "Trainer", iteration: int, loss: float, psnr: float) -> None:
        self.loss_ema = loss if self.loss_ema is None else 0.9 * self.loss_ema + 0.1 * loss
        self.psnr_ema = psnr if self.psnr_ema is None else 0.9 * self.psnr_ema + 0.1 * psnr
        self.bar.update(1)
        if iteration % 10 == 0:
            self.bar.set_postfix(loss=f"{self.loss_ema:.4f}", psnr=f"{self.psnr_ema:.2f}")

    def on_eval(self, trainer: "Trainer", record: dict[str, Any]) -> None:
        self.bar.write(f"[eval {record['iteration']}] psnr {record['psnr']:.2f}  ssim {record['ssim']:.4f}"
                       + (f"  lpips {record['lpips']:.4f}" if "lpips" in record else ""))

    def on_close(self, trainer: "Trainer") -> None:
        if self.bar is not None:
            self.bar.close()
