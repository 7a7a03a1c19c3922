"""Test-set evaluation as 3DGS reports it, and the render | ground-truth images of a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from trsplat.config import TrainConfig
from trsplat.gaussians import Gaussians
from trsplat.io_utils import atomic_write
from trsplat.metrics import LPIPS_KEYS, METRIC_KEYS, evaluate_images
from trsplat.render import render
from trsplat.training.distributed import SINGLE, World


def active_sh_degree(iteration: int, cfg: TrainConfig) -> int:
    """3DGS ramp: degree 0 for the first ``sh_interval`` iterations, then +1 per interval."""
    return min(cfg.sh_degree, (iteration - 1) // cfg.sh_interval)


def render_pair(image: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """Render | ground truth side by side, 8-bit, (H, 2W, 3)."""
    pair = torch.cat([image, gt], dim=1).clamp(0, 1).cpu().numpy()
    return (pair * 255 + 0.5).astype(np.uint8)


def write_png(path: Path, pixels: np.ndarray) -> None:
    with atomic_write(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")


def save_render_pair(path: Path, image: torch.Tensor, gt: torch.Tensor) -> None:
    """Write render | ground truth side by side as an 8-bit PNG."""
    write_png(path, render_pair(image, gt))


@torch.no_grad()
def evaluate(gaussians: Gaussians, frames, *, sh_degree: int, background, backend: str,
             lpips: bool = True, save_dir: Path | None = None, n_saved: int = 0,
             world: World = SINGLE) -> dict[str, float]:
    """Mean PSNR/SSIM/LPIPS over ``frames`` (renders clamped to [0, 1], as 3DGS evaluates).
    Data-parallel: each process evaluates its share of the views, rank 0 writes the saved pairs."""
    totals: dict[str, float] = {}
    saved: list[tuple[Path, np.ndarray]] = []
    for k, frame in enumerate(frames):
        if not world.owns(k):
            continue
        out = render(gaussians, frame.camera, sh_degree=sh_degree, background=background, backend=backend)
        image = out.image.clamp(0, 1)
        gt = frame.image.to(image.device)
        for key, value in evaluate_images(image, gt, lpips=lpips).items():
            totals[key] = totals.get(key, 0.0) + value
        if save_dir is not None and k < n_saved:
            saved.append((save_dir / f"{k:03d}_{Path(frame.camera.name).stem or k}.png", render_pair(image, gt)))
    if world.distributed:
        keys = METRIC_KEYS + (LPIPS_KEYS if lpips else ())
        totals = dict(zip(keys, world.sum_floats([totals.get(key, 0.0) for key in keys])))
        gathered = world.gather_to_writer(saved)
        saved = [pair for rank_pairs in gathered or [] for pair in rank_pairs]
    for path, pixels in saved:
        write_png(path, pixels)
    return {key: value / len(frames) for key, value in totals.items()}
