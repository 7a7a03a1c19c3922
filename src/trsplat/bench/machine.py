"""The machine a benchmark ran on (CPU model, cores, memory) and the command that ran it."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path


def cpu_model() -> str:
    """The ``model name`` of /proc/cpuinfo, else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""


def machine_label(device: str = "cpu") -> str:
    """What train seconds depend on, in one line: the CPU model, or the GPU's name for ``cuda``.
    Train seconds of runs with different labels do not compare."""
    if str(device).startswith("cuda"):
        import torch

        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA)"
    return cpu_model() or "unknown CPU"


def usable_cores() -> int | None:
    """Cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def memory_bytes() -> int | None:
    """Total RAM from /proc/meminfo; None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def command_line() -> str:
    """This process's command as a user would type it (``trsplat ...`` when run as the CLI)."""
    if sys.argv[0].endswith("trsplat"):
        return " ".join(["trsplat"] + sys.argv[1:])
    return " ".join(sys.argv)
