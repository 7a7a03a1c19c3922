"""Process settings the ``trsplat`` command applies at start-up (importing the library does not).

:func:`tune_process` does two things:

1. ``OMP_WAIT_POLICY=PASSIVE`` unless the environment sets it. torch's (and numba's) OpenMP
   threads otherwise spin at every barrier, and when other processes compete for the cores a
   spinning thread waits for a descheduled one: on the 2-core VM, the README's toy training ran
   at 1.0 it/s next to two one-thread runs with the default policy and at 9.0 it/s with
   ``PASSIVE``. libgomp reads it once, when torch is imported, so the command's entry point
   (:mod:`trsplat.command`) calls :func:`tune_process` before anything imports torch.
2. :func:`tune_malloc` (below).

Not set: torch's ``THP_MEM_ALLOC_ENABLE=1`` (transparent huge pages for buffers of 2 MiB and
more). It cut `tr`'s optimizer step at 300 000 Gaussians from ~80-90 to ~65 ms in isolation,
but training iterations did not get measurably faster and peak memory rose by 4-30 MiB
(``docs/cpu_performance.md``, session 23); set it in the environment to try it.

Malloc thresholds: keep large freed buffers in the heap instead of returning them to the OS
(glibc only).

By default glibc serves every allocation above ~128 KiB-32 MiB (dynamic threshold) with a fresh
``mmap`` and unmaps it on free. A training iteration allocates and frees hundreds of such
tensors, and each fresh mapping costs a page fault per 4 KiB page on first touch: on the
project's 2-core VM that was 30-50k minor faults and ~0.1 s of system time per iteration at 100k
Gaussians. Raising the mmap threshold to 32 MiB and the trim threshold to 2 GiB (``mallopt`` takes an
int) lets the heap reuse those pages (about the effect of the environment variables
``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=2147483647``).

``TRSPLAT_MALLOC_TUNING=0`` turns it off. It is a no-op where glibc's ``mallopt`` is absent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 2**31 - 1  # mallopt takes an int


ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
"""What :func:`tune_process` puts in the environment where it is unset."""


def tune_process() -> None:
    """Apply both settings; call before torch is imported (child processes inherit the
    environment). Under ``torchrun`` with several processes on the machine, numba's threads
    follow ``OMP_NUM_THREADS`` (torchrun sets 1) unless ``NUMBA_NUM_THREADS`` is set, so the
    processes do not oversubscribe the cores."""
    for name, value in ENVIRONMENT.items():
        os.environ.setdefault(name, value)
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1")) > 1 and "OMP_NUM_THREADS" in os.environ:
        os.environ.setdefault("NUMBA_NUM_THREADS", os.environ["OMP_NUM_THREADS"])
    tune_malloc()


def tune_malloc() -> bool:
    """Apply the thresholds above; True if glibc accepted them."""
    if os.environ.get("TRSPLAT_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
