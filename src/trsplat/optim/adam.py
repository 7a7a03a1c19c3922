"""The 3DGS Adam recipe: one Adam with a learning rate per parameter group.

Position lr 1.6e-4 -> 1.6e-6 times the scene extent with exponential decay; SH dc 2.5e-3,
SH rest 2.5e-3/20, opacity 0.025, scale 5e-3, rotation 1e-3; eps 1e-15 (all as 3DGS).
"""

from __future__ import annotations

import torch

from trsplat.gaussians import Gaussians
from trsplat.optim.schedules import exponential_decay


class GaussianAdam:
    """Adam over the raw tensors of a :class:`Gaussians`, with the 3DGS per-group learning rates.

    ``step(iteration)`` sets the decayed position lr for that iteration and updates all groups.
    """

    def __init__(self, gaussians: Gaussians, *, extent: float, max_steps: int,
                 lr_means: float = 1.6e-4, lr_means_final: float = 1.6e-6, lr_sh_dc: float = 2.5e-3,
                 lr_sh_rest: float = 2.5e-3 / 20, lr_opacity: float = 0.025, lr_scale: float = 5e-3,
                 lr_rotation: float = 1e-3, eps: float = 1e-15) -> None:
        self.extent = extent
        self.max_steps = max_steps
        self.lr_means = (lr_means * extent, lr_means_final * extent)
        lrs = {
            "means": self.lr_means[0], "sh_dc": lr_sh_dc, "sh_rest": lr_sh_rest,
            "opacity_logits": lr_opacity, "log_scales": lr_scale, "quats": lr_rotation,
        }
        params = gaussians.params()
        self.adam = torch.optim.Adam(
            [{"params": [params[name]], "lr": lr, "name": name} for name, lr in lrs.items()],
            lr=0.0, eps=eps,
        )

    def lr_for(self, iteration: int) -> float:
        """Position learning rate at ``iteration`` (1-based, as 3DGS)."""
        return exponential_decay(iteration, *self.lr_means, self.max_steps)

    def step(self, iteration: int, context=None) -> None:
        for group in self.adam.param_groups:
            if group["name"] == "means":
                group["lr"] = self.lr_for(iteration)
        self.adam.step()

    def zero_grad(self) -> None:
        self.adam.zero_grad(set_to_none=True)

    def state_dict(self) -> dict:
        return self.adam.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state)
