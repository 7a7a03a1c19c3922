"""The optimizer of a training configuration, with its schedulers."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from trsplat.optim.adam import AdamTrustRegion, GaussianAdam
from trsplat.optim.schedules import ExponentialDecay
from trsplat.optim.tr import TrustRegionNewton
from trsplat.optim.trust_region import HellingerTrustRegion


def build_optimizer(ocfg: Any, params: dict[str, Tensor], *, extent: float, iters: int,
                    seed: int) -> tuple[torch.optim.Optimizer, list[ExponentialDecay]]:
    """The optimizer named by ``ocfg.optimizer`` (``adam``, ``adam-tr``, ``tr``) over ``params``.

    ``ocfg`` has the optimizer fields of :class:`trsplat.config.TrainConfig` and its
    ``trust_region()``.  Returns the optimizer and the schedulers to step, with the 1-based
    iteration, right before each ``optimizer.step``: the position lr decays over
    ``lr_means_max_steps or iters`` steps; ε decays over ``iters`` for ``tr`` and, as the lr, over
    ``lr_means_max_steps or iters`` for ``adam-tr``.
    """
    if ocfg.optimizer in ("adam", "adam-tr"):
        lrs = {"means": ocfg.lr_means * extent, "sh_dc": ocfg.lr_sh_dc, "sh_rest": ocfg.lr_sh_rest,
               "opacity_logits": ocfg.lr_opacity, "log_scales": ocfg.lr_scale, "quats": ocfg.lr_rotation}
        max_steps = ocfg.lr_means_max_steps or iters
        betas = (ocfg.adam_beta1, ocfg.adam_beta2)
        fused = ocfg.adam_impl == "fused"
        if ocfg.optimizer == "adam":
            optimizer = GaussianAdam(params, lrs, ocfg.adam_eps, betas, fused)
        else:
            optimizer = AdamTrustRegion(params, lrs, ocfg.adam_eps, betas, fused, tr_eps=ocfg.eps_start,
                                        trust_region=HellingerTrustRegion(ocfg.trust_region()))
        schedulers = [ExponentialDecay(optimizer, key="lr", group="means", start=ocfg.lr_means * extent,
                                       end=ocfg.lr_means_final * extent, max_steps=max_steps)]
        if ocfg.optimizer == "adam-tr":
            schedulers.append(ExponentialDecay(optimizer, key="tr_eps", start=ocfg.eps_start, end=ocfg.eps_end,
                                               max_steps=max_steps))
        return optimizer, schedulers
    if ocfg.optimizer != "tr":
        raise ValueError(f"unknown optimizer {ocfg.optimizer!r}; choose adam, adam-tr or tr")
    optimizer = TrustRegionNewton(
        params, trust_region=HellingerTrustRegion(ocfg.trust_region()), tr_eps=ocfg.eps_start,
        curvature=ocfg.curvature, interval=ocfg.curvature_interval, theta1=ocfg.theta1, theta2=ocfg.theta2,
        guard=ocfg.guard, guard_floor=ocfg.guard_floor, bias_correction=ocfg.bias_correction,
        step_norm=ocfg.step_norm, step_norm_quantile=ocfg.step_norm_quantile, seed=seed,
        radius=ocfg.tr_radius, radius_test_every=ocfg.tr_radius_test_every, radius_test_on=ocfg.tr_radius_test,
        radius_held_out_views=ocfg.tr_radius_test_views, radius_scale_max=ocfg.tr_radius_scale_max,
        radius_opacity_scale_max=ocfg.tr_radius_opacity_max, damping=ocfg.tr_damping,
        radius_scale_min=ocfg.tr_radius_scale_min, opacity_step=ocfg.tr_opacity_step, opacity_lr=ocfg.lr_opacity,
        adam_eps=ocfg.adam_eps, step_rule=ocfg.tr_step)
    return optimizer, [ExponentialDecay(optimizer, key="tr_eps", start=ocfg.eps_start, end=ocfg.eps_end,
                                        max_steps=iters)]
