"""Batch-size rules: what the optimiser and its schedules see with B training views per step.

With ``--batch-views B`` each step's gradient is the mean over B views, so a run takes B times
fewer steps per epoch. :func:`batch_rules` returns the configuration that keeps the training
per *view* comparable (docs/training.md has the derivation and the measurements):

- Adam (and ADAM-TR's Adam step): learning rates × √B, ε / √B, β₁ → β₁ᴮ, β₂ → β₂ᴮ (the rule of
  gsplat and Grendel-GS);
- trust region (ADAM-TR, 3DGS²-TR): ε × B², i.e. radii about × B (the radii grow with √ε), so
  that a step of B views moves as far as B steps of one view (measured against ε × B and ε × 1);
  3DGS²-TR's EMA factors θ₁, θ₂ → θᴮ;
- schedules counted in steps (position-lr decay, SH degree ramp) run B times faster.

``--no-batch-scaling`` keeps the options as given. With B = 1 nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import replace

from trsplat.config import TrainConfig


def batch_size(cfg: TrainConfig, world_size: int = 1) -> int:
    """Views per step: ``--batch-views``, by default one per process."""
    return cfg.batch_views if cfg.batch_views is not None else world_size


def batch_rules(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` as the optimiser, its schedules and the SH ramp follow it with ``cfg.batch_views``
    views per step (the run's ``config.json`` keeps the options as given)."""
    b = cfg.batch_views or 1
    if b == 1 or not cfg.batch_scaling:
        return cfg
    o, root = cfg.optim, math.sqrt(b)
    optim = replace(
        o, lr_means=o.lr_means * root, lr_means_final=o.lr_means_final * root, lr_sh_dc=o.lr_sh_dc * root,
        lr_sh_rest=o.lr_sh_rest * root, lr_opacity=o.lr_opacity * root, lr_scale=o.lr_scale * root,
        lr_rotation=o.lr_rotation * root, adam_eps=o.adam_eps / root, adam_beta1=o.adam_beta1 ** b,
        adam_beta2=o.adam_beta2 ** b, eps_start=o.eps_start * b * b, eps_end=o.eps_end * b * b,
        theta1=o.theta1 ** b, theta2=o.theta2 ** b,
        lr_means_max_steps=None if o.lr_means_max_steps is None else max(1, math.ceil(o.lr_means_max_steps / b)))
    return replace(cfg, optim=optim, sh_interval=max(1, math.ceil(cfg.sh_interval / b)))
