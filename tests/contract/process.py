"""A worker subprocess whose stdout lines are collected: the contract's
``tests/contract/worker.py`` for a kit, or any module a test starts."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from ..redis_support import Lines
from .kit import BackendKit

ROOT = Path(__file__).resolve().parents[2]
#: How long a worker may take to start, stop or die.
SOON = 30.0


class WorkerProcess:
    """``python -m <module> <args>`` from the project's root; ready once it
    prints ``ready``. Each event is a line ``<kind> <field> <field>...``."""

    def __init__(self, *argv: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *argv],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines = Lines(self.proc)
        try:
            self.lines.wait_count(1, "ready")
        except AssertionError:
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"the worker {argv[0]} did not start: {err[-2000:]}") from None

    def fields(self, kind: str) -> list[list[str]]:
        """The fields after ``kind`` of each line of that kind, in order."""
        out = []
        for line in list(self.lines.lines):
            parts = line.split()
            if parts and parts[0] == kind:
                out.append(parts[1:])
        return out

    def events(self, kind: str) -> list[tuple[str, int]]:
        """``(body, attempt)`` of each ``kind`` line."""
        return [(f[0], int(f[1])) for f in self.fields(kind)]

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: a graceful stop, which must succeed."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        assert rc == 0, self.proc.stderr.read() if self.proc.stderr else rc
        self.lines.finish()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(SOON)
        self.lines.finish()


class Worker(WorkerProcess):
    """``tests/contract/worker.py`` for ``kit``."""

    def __init__(self, kit: BackendKit, *args: str) -> None:
        super().__init__("tests.contract.worker", kit.name, kit.queue, *args)
