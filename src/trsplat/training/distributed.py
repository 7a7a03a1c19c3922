"""Data-parallel training on torch.distributed: the process group the training loop runs in.

Every process (rank) holds all Gaussians and renders its share of each step's views; gradients,
curvature estimates and a few per-step scalars are summed across ranks, so every rank takes the
same optimiser step and the parameters stay identical (checked every ``--dist-check-every``
steps). Only rank 0 (the *writer*) writes the run folder. Launched by ``torchrun`` (its
environment variables ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``...), gloo on the CPU, NCCL on
CUDA. One process without torchrun is :data:`SINGLE`, where every reduction is the identity.
See docs/distributed.md.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Callable, Sequence, TypeVar

import torch
import torch.distributed as dist

from trsplat.errors import TrsplatError

T = TypeVar("T")


class LostRank(TrsplatError):
    """A collective failed or timed out: another process stopped or cannot be reached."""


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` training processes (``rank`` 0 writes the run folder)."""

    rank: int = 0
    size: int = 1
    device: str = "cpu"

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's items: every ``size``-th from ``rank`` on (round robin, so that shares of a
        batch differ by at most one view)."""
        return list(items[self.rank::self.size])

    def owns(self, index: int) -> bool:
        return index % self.size == self.rank

    # -- reductions (identity in one process) --------------------------------------------------
    def all_reduce_sum(self, tensors: dict[str, torch.Tensor]) -> None:
        """Sum each tensor over the ranks, in place (one collective over a flat buffer)."""
        if not self.distributed or not tensors:
            return
        values = list(tensors.values())
        flat = torch.cat([t.reshape(-1) for t in values]).to(self.device)
        self._collective("sum gradients", lambda: dist.all_reduce(flat))
        offset = 0
        for t in values:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def sum_floats(self, values: Sequence[float]) -> list[float]:
        """Python floats summed over the ranks (float64)."""
        if not self.distributed:
            return list(values)
        buffer = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        self._collective("sum step statistics", lambda: dist.all_reduce(buffer))
        return buffer.tolist()

    def gather_to_writer(self, obj: T) -> list[T] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
        if not self.distributed:
            return [obj]
        out: list[Any] | None = [None] * self.size if self.is_writer else None
        self._collective("gather", lambda: dist.gather_object(obj, out, dst=0))
        return out

    def from_writer(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only and its result (or its one-line error) sent to every rank:
        for what only the writer can see (the run folder, which other machines may not have)."""
        if not self.distributed:
            return fn()
        payload: list[Any] = [None]
        if self.is_writer:
            try:
                payload[0] = ("ok", fn())
            except TrsplatError as exc:
                payload[0] = ("error", str(exc))
        self._collective("broadcast", lambda: dist.broadcast_object_list(payload, src=0))
        kind, value = payload[0]
        if kind == "error":
            raise TrsplatError(value)
        return value

    def check_identical(self, params: dict[str, torch.Tensor], iteration: int) -> None:
        """Raise if any rank's parameters differ from rank 0's, bit for bit."""
        if not self.distributed:
            return
        digest = hashlib.sha1()
        for name, p in params.items():
            digest.update(name.encode())
            digest.update(p.detach().cpu().contiguous().numpy().tobytes())
        digests = [None] * self.size
        self._collective("compare parameters", lambda: dist.all_gather_object(digests, digest.hexdigest()))
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            raise TrsplatError(f"iteration {iteration}: the parameters of rank(s) {differ} differ from rank 0's; "
                               f"the processes no longer train the same model (a nondeterministic backend "
                               f"or different data on the machines?)")

    def _collective(self, what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except (RuntimeError, dist.DistError) as exc:  # a peer died, or the timeout passed
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LostRank(f"rank {self.rank} of {self.size}: lost contact with the other processes during "
                           f"'{what}' ({reason})") from None


SINGLE = World()
"""One process, no torch.distributed."""


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_world(timeout_s: float, device: str = "cpu") -> World:
    """Join the process group that ``torchrun`` set up (gloo on the CPU, NCCL on CUDA); the
    ``timeout_s`` bounds every collective, so a process that stops answering ends the others
    instead of hanging them."""
    if not launched_by_torchrun():
        return SINGLE
    if not dist.is_available():
        raise TrsplatError("this torch build has no torch.distributed")
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        _import_group_defaults()
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        except (RuntimeError, ValueError, dist.DistError) as exc:
            raise TrsplatError(f"cannot join the torchrun process group ({str(exc).strip().splitlines()[0]})") from None
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return World(rank=dist.get_rank(), size=dist.get_world_size(), device=device)


def _import_group_defaults() -> None:
    """Import ``torch.distributed.nn.functional`` while no process group exists.

    Its collectives declare ``group=group.WORLD`` as a default argument, evaluated once, at import.
    Imported after ``init_process_group`` (the first ``torch.optim`` optimiser imports
    ``torch._dynamo``, which imports it), those defaults hold the default group for the rest of the
    process, so :func:`close_world` cannot free it: gloo's worker and I/O threads then outlive the
    run into interpreter shutdown, where they can abort the process ("terminate called without an
    active exception"). Imported first, the defaults are None (the collectives then use the
    default group of the moment). See docs/distributed.md, "Shutdown".
    """
    import torch.distributed.nn.functional  # noqa: F401


def close_world(world: World) -> None:
    """Destroy the process group, which joins gloo's threads (while nothing else refers to the group)."""
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
