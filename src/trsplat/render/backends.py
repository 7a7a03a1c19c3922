"""Rendering backends: a projection and a compositor per backend.

Every compositor is a function with the signature of
:func:`trsplat.render.composite_reference.composite_reference` and must give the same image and
alpha, gradients (VJP) and tangents (JVP) to float tolerance. ``reference`` is pure torch;
native backends are ``torch.autograd.Function`` s with ``forward``, ``backward`` and ``jvp``.
Projection is torch for every backend; ``cpu`` swaps in :func:`project_cpu`, the same primal
with numba VJP/JVP kernels (profiling showed torch autograd of the projection costing as much
as the compositing on CPU).
"""

from __future__ import annotations

from typing import Callable

import torch

from trsplat.errors import TrsplatError
from trsplat.render.composite_reference import composite_reference
from trsplat.render.project import project

BACKENDS = ("reference", "cpu", "cuda")


def get_compositor(name: str) -> Callable:
    """The compositing function of backend ``name``."""
    if name == "reference":
        return composite_reference
    if name == "cpu":
        from trsplat.render.composite_cpu import composite_cpu

        return composite_cpu
    if name == "cuda":
        from trsplat.render.composite_cuda import check_available, composite_cuda

        check_available()  # TrsplatError without a GPU + numba-cuda (or the simulator)
        return composite_cuda
    raise TrsplatError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")


def get_projector(name: str) -> Callable:
    """The projection function of backend ``name`` (signature of :func:`project`)."""
    if name == "cpu":
        from trsplat.render.cpu_project import project_cpu

        return project_cpu
    return project


def default_backend() -> str:
    """``cuda`` when a GPU is present and supported, else ``cpu`` when its kernels import, else ``reference``."""
    if torch.cuda.is_available():  # numba-cuda is only imported on machines with a GPU
        from trsplat.render.composite_cuda import is_usable

        if is_usable():
            return "cuda"
    try:
        from trsplat.render import composite_cpu  # noqa: F401
    except ImportError:
        return "reference"
    return "cpu"


def resolve_backend(name: str | None) -> str:
    if name in (None, "auto"):
        return default_backend()
    if name not in BACKENDS:
        raise TrsplatError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return name
