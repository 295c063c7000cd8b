"""`foxtive run --processes N`: N fresh interpreters, supervised.

The parent is plain Python: it never starts foxtive's runtime (tokio does not
survive ``fork``), it only spawns children with ``python -m foxtive run``,
restarts one that dies with backoff, and on SIGTERM/SIGINT forwards SIGTERM to
every child and waits for them to drain.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

log = logging.getLogger("foxtive")

#: Restart delays for a child that died: 1 s, doubling, at most 30 s; reset
#: once a child has lived this long.
_BACKOFF_START, _BACKOFF_MAX, _HEALTHY_AFTER = 1.0, 30.0, 60.0


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0
        self.backoff = _BACKOFF_START
        self.next_start = 0.0


def run_processes(target: str, processes: int, child_args: Sequence[str],
                  shutdown_timeout: float, health_port: int | None) -> int:
    """Run ``processes`` children until a signal; returns the exit code."""
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        signals.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    children = [_Child(i) for i in range(processes)]

    def spawn(child: _Child) -> None:
        args = [sys.executable, "-m", "foxtive", "run", target, "--processes", "1",
                *child_args]
        if health_port is not None:
            args += ["--health-port", str(health_port + child.index)]
        env = {**os.environ, "FOXTIVE_CHILD_INDEX": str(child.index)}
        child.proc = subprocess.Popen(args, env=env)
        child.started = time.monotonic()
        print(f"foxtive: child {child.index} started (pid {child.proc.pid})", flush=True)

    for child in children:
        spawn(child)
    while not stop.is_set():
        now = time.monotonic()
        for child in children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                lived = now - child.started
                if lived > _HEALTHY_AFTER:
                    child.backoff = _BACKOFF_START
                log.error("child %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                          child.index, proc.pid, proc.returncode, lived, child.backoff)
                child.proc = None
                child.next_start = now + child.backoff
                child.backoff = min(child.backoff * 2, _BACKOFF_MAX)
            if child.proc is None and now >= child.next_start:
                child.restarts += 1
                spawn(child)
        stop.wait(0.1)

    # Drain: every child gets SIGTERM and the shutdown timeout to finish.
    log.info("stopping %d children", processes)
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + shutdown_timeout + 10.0
    code = 0
    for child in children:
        if child.proc is None:
            continue
        try:
            rc = child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("child %d did not stop in time; killing it", child.index)
            child.proc.kill()
            rc = child.proc.wait()
        if rc != 0:
            code = 1
    return code
