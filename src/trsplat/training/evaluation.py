"""Test-set evaluation as 3DGS reports it, and the render | ground-truth images of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trsplat.config import TrainConfig
from trsplat.gaussians import Gaussians
from trsplat.io_utils import atomic_write
from trsplat.metrics import evaluate_images
from trsplat.render import render


def active_sh_degree(iteration: int, cfg: TrainConfig) -> int:
    """3DGS ramp: degree 0 for the first ``sh_interval`` iterations, then +1 per interval."""
    return min(cfg.sh_degree, (iteration - 1) // cfg.sh_interval)


def save_render_pair(path: Path, image: torch.Tensor, gt: torch.Tensor) -> None:
    """Write render | ground truth side by side as an 8-bit PNG."""
    pair = torch.cat([image, gt], dim=1).clamp(0, 1).cpu().numpy()
    with atomic_write(path) as tmp:
        Image.fromarray((pair * 255 + 0.5).astype(np.uint8)).save(tmp, format="PNG")


@torch.no_grad()
def evaluate(gaussians: Gaussians, frames, *, sh_degree: int, background, backend: str,
             lpips: bool = True, save_dir: Path | None = None, n_saved: int = 0) -> dict[str, float]:
    """Mean PSNR/SSIM/LPIPS over ``frames`` (renders clamped to [0, 1], as 3DGS evaluates)."""
    totals: dict[str, float] = {}
    for k, frame in enumerate(frames):
        out = render(gaussians, frame.camera, sh_degree=sh_degree, background=background, backend=backend)
        image = out.image.clamp(0, 1)
        gt = frame.image.to(image.device)
        for key, value in evaluate_images(image, gt, lpips=lpips).items():
            totals[key] = totals.get(key, 0.0) + value
        if save_dir is not None and k < n_saved:
            save_render_pair(save_dir / f"{k:03d}_{Path(frame.camera.name).stem or k}.png", image, gt)
    return {key: value / len(frames) for key, value in totals.items()}
