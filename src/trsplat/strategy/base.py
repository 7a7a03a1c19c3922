"""The strategy protocol and the paper's default, no densification."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from trsplat.gaussians import Gaussians


@dataclass
class StepInfo:
    """What one training step rendered: the strategy's view of it.

    Attributes:
        iteration: the 1-based training iteration.
        view_ids: indices of the training views rendered for the gradient.
        renders: one :class:`~trsplat.render.RenderOutput` per view (radii, visibility, ...).
        extras: free-form values a strategy or hook wants to pass along.
        reduce: in data-parallel training, sums tensors over the processes in place (each
            process renders only its share of ``view_ids``: ``renders`` are this process's);
            None in one process. A strategy reduces its statistics with it so that every
            process takes the same decisions.
    """

    iteration: int
    view_ids: list[int]
    renders: list[Any] = field(default_factory=list)
    extras: dict[str, Any] = field(default_factory=dict)
    reduce: Callable[[dict[str, torch.Tensor]], None] | None = None


class Strategy:
    """Base class: called by the trainer before and after each backward pass.

    ``step_pre_backward`` runs after the step's renders, before ``loss.backward()`` (e.g. to
    retain gradients of 2D means); ``step_post_backward`` after the gradients are synchronised and
    before ``optimizer.step`` (where ADC and MCMC add, prune or relocate Gaussians through
    :mod:`trsplat.strategy.ops`). Both may replace the tensors of ``gaussians``; the optimiser's
    parameters and state then follow through the ops helpers. ``state_dict`` is saved in the
    checkpoint, so a strategy with counters resumes bit-identically.
    """

    def step_pre_backward(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, info: StepInfo) -> None:
        pass

    def step_post_backward(self, gaussians: Gaussians, optimizer: torch.optim.Optimizer, info: StepInfo) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def records(self) -> list[dict[str, int]]:
        """One record per refinement so far (its iteration and counts), for ``metrics.json``."""
        return []


class NoDensification(Strategy):
    """A fixed set of Gaussians (the paper's protocol and trsplat's default)."""


class StrategyGenerator:
    """A strategy's own random generator: created on first use on the Gaussians' device, seeded
    with ``seed``, its state saved in the checkpoint so that ``--resume`` draws the same numbers."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._state: torch.Tensor | None = None   # a loaded state, applied on first use

    def on(self, device: torch.device) -> torch.Generator:
        """The generator on ``device`` (moved there with its state if it lived elsewhere)."""
        if self._generator is None or self._generator.device != torch.device(device):
            state = self.state_dict()
            self._generator = torch.Generator(device=device)
            if state is not None:
                self._generator.set_state(state)
            else:
                self._generator.manual_seed(self.seed)
        return self._generator

    def state_dict(self) -> torch.Tensor | None:
        return self._generator.get_state() if self._generator is not None else self._state

    def load_state_dict(self, state: torch.Tensor | None) -> None:
        self._generator, self._state = None, state
