"""The machine a benchmark ran on (CPU model, cores, memory), the command that ran it, and when."""

from __future__ import annotations

import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


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


def _meminfo_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_bytes() -> int | None:
    """Total RAM (``MemTotal`` of /proc/meminfo); None where it cannot be read."""
    return _meminfo_bytes("MemTotal")


def available_memory_bytes() -> int | None:
    """Memory available to new allocations (``MemAvailable`` of /proc/meminfo); None where unknown."""
    return _meminfo_bytes("MemAvailable")


def command_line() -> str:
    """This process's command as a user would type it (``trsplat ...`` when run as the CLI)."""
    if sys.argv[0].endswith("trsplat"):
        return " ".join(["trsplat"] + sys.argv[1:])
    return " ".join(sys.argv)


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def machine_info(*, threads: bool = True) -> dict[str, Any]:
    """Host, CPU model, usable cores, RAM, platform, Python, torch and the GPU; with ``threads``,
    also what CPU timings depend on: torch's and numba's thread counts, numba's threading layer
    (None until a parallel kernel has run) and numba's and numpy's versions."""
    import torch

    info: dict[str, Any] = {"host": platform.node(), "cpu_model": cpu_model(), "cores": usable_cores(),
                            "memory_bytes": memory_bytes(), "platform": platform.platform(),
                            "python": platform.python_version(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    if threads:
        import numba
        import numpy

        try:
            layer = numba.threading_layer()
        except Exception:  # the threading layer is only known after a parallel kernel ran
            layer = None
        info.update(torch_threads=torch.get_num_threads(), numba=numba.__version__,
                    numba_threads=numba.get_num_threads(), numba_threading_layer=layer, numpy=numpy.__version__)
    return info


def machine_text(m: dict[str, Any]) -> str:
    """One line for a report from a :func:`machine_info` record ("" for none)."""
    if not m:
        return ""
    text = f"{m.get('cpu_model') or 'unknown CPU'}, {m.get('cores')} cores"
    if m.get("memory_bytes"):
        text += f", {m['memory_bytes'] / 2**30:.0f} GiB RAM"
    if m.get("gpu"):
        text += f", GPU {m['gpu']}"
    text += f" ({m.get('host', '?')}; {m.get('platform', '')}; Python {m.get('python')}, torch {m.get('torch')})"
    return text
