"""What a process costs and what else the machine does: CPU seconds from
``wait4`` / ``getrusage``, RSS from ``/proc``, the load average printed
next to every figure. Shared by both harnesses and their children."""

from __future__ import annotations

import os
import time
from typing import Any


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(ru: Any) -> float:
    """User + system seconds of a ``resource.struct_rusage`` (``wait4``, ``getrusage``)."""
    return float(ru.ru_utime + ru.ru_stime)


def vmrss_mib() -> float:
    """This process's resident set now."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def poll_hwm(pid: int, out: list[float]) -> None:
    """Peak RSS (VmHWM) of a running process, polled every 20 ms until it ends."""
    while True:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        out[0] = max(out[0], int(line.split()[1]) / 1024)
        except OSError:
            return
        time.sleep(0.02)
