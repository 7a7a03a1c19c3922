"""The registry of rendering backends: which projection, binning and compositing each one runs.

A :class:`Backend` names its three stages. Each stage is a differentiable function (reverse
mode, ``forward_ad`` and ``torch.func.jvp``, i.e. forward, VJP and JVP) with the signature of
the pure-torch one: :func:`trsplat.render.project.project`,
:func:`trsplat.render.tiles.bin_splats` and
:func:`trsplat.render.composite_reference.composite_reference`. Every backend must give the
reference's images, gradients and tangents to float tolerance (``tests/test_backend_conformance.py``).

This module is the one place that chooses a backend: :func:`get_backend` (checks it can run
here), :func:`resolve_backend` (``"auto"`` → :func:`default_backend`). Stages are imported on
first call, so ``import trsplat`` never loads numba-cuda. Adding a backend:
``docs/backends_cpu.md``.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Callable

import torch

from trsplat.errors import TrsplatError
from trsplat.render.composite_reference import composite_reference
from trsplat.render.project import project
from trsplat.render.tiles import bin_splats


@dataclass(frozen=True)
class Backend:
    """One rendering backend.

    Attributes:
        name: what ``render(..., backend=name)`` and ``--backend`` take.
        project: raw Gaussians → screen-space splats (signature of ``project.project``).
        bin: splats → sorted per-tile lists (signature of ``tiles.bin_splats``).
        composite: splats + tile lists → image, alpha (signature of ``composite_reference``).
        unavailable: why the backend cannot run here (one line), None when it can.
        auto: whether ``"auto"`` may pick it (tried in the order of :data:`AUTO_ORDER`).
        device: where its inputs should live (the trainer keeps the Gaussians there).
    """

    name: str
    project: Callable
    bin: Callable
    composite: Callable
    unavailable: Callable[[], str | None]
    auto: Callable[[], bool]
    device: Callable[[], torch.device]


def _lazy(path: str) -> Callable:
    """The function ``module:name``, imported on its first call (numba / numba-cuda modules)."""
    module, name = path.split(":")
    target = functools.cache(lambda: getattr(importlib.import_module(module), name))

    def call(*args, **kwargs):
        return target()(*args, **kwargs)

    call.__doc__ = f"``{module}.{name}`` (imported on first call)."
    return call


def _cuda_module():
    return importlib.import_module("trsplat.render.composite_cuda")  # imports no numba-cuda


def _cpu_unavailable() -> str | None:
    try:
        importlib.import_module("trsplat.render.composite_cpu")
    except ImportError as e:
        return f"backend 'cpu' needs numba (pip install numba): {e}"
    return None


def _cpu() -> torch.device:
    return torch.device("cpu")


def _cuda_device() -> torch.device:
    return torch.device("cpu") if _cuda_module().simulator_enabled() else torch.device("cuda")


REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("reference", project, bin_splats, composite_reference,
            unavailable=lambda: None, auto=lambda: True, device=_cpu),
    Backend("cpu", _lazy("trsplat.render.cpu_project:project_cpu"), bin_splats,
            _lazy("trsplat.render.composite_cpu:composite_cpu"),
            unavailable=_cpu_unavailable, auto=lambda: _cpu_unavailable() is None, device=_cpu),
    Backend("cuda", project, bin_splats, _lazy("trsplat.render.composite_cuda:composite_cuda"),
            unavailable=lambda: _cuda_module().unavailable_reason(),
            # a real GPU only (not the simulator); numba-cuda is imported only where torch sees one
            auto=lambda: torch.cuda.is_available() and _cuda_module().is_usable(),
            device=_cuda_device),
)}
BACKENDS = tuple(REGISTRY)
AUTO_ORDER = ("cuda", "cpu", "reference")  # what "auto" tries, first usable wins


def get_backend(name: str) -> Backend:
    """The backend ``name``.

    Raises:
        TrsplatError: unknown name, or the backend cannot run here (the reason in one line).
    """
    backend = REGISTRY.get(name)
    if backend is None:
        raise TrsplatError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    reason = backend.unavailable()
    if reason is not None:
        raise TrsplatError(reason)
    return backend


def default_backend() -> str:
    """``cuda`` on a usable GPU (not the simulator), else ``cpu`` when numba imports, else ``reference``."""
    return next(name for name in AUTO_ORDER if REGISTRY[name].auto())


def resolve_backend(name: str | None) -> str:
    """``name``, with None and ``"auto"`` replaced by :func:`default_backend`."""
    if name in (None, "auto"):
        return default_backend()
    if name not in REGISTRY:
        raise TrsplatError(f"unknown backend {name!r}; choose one of auto, {', '.join(BACKENDS)}")
    return name


def get_compositor(name: str) -> Callable:
    """``get_backend(name).composite`` (kept for callers not yet using :func:`get_backend`)."""
    return get_backend(name).composite


def get_projector(name: str) -> Callable:
    """``get_backend(name).project`` (kept for callers not yet using :func:`get_backend`)."""
    return get_backend(name).project
