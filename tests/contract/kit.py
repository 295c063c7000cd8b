"""What the contract suite needs to know about a backend: the kit.

A kit makes fresh backends on its own queue, judges what is left in the
broker with a client that is not foxtive, and, when the backend lives outside
the test process, runs worker subprocesses and cuts connections from the
broker side. Kits live in ``tests/contract/kits/``, one class per file; every
module there is imported, and every concrete subclass of :class:`BackendKit`
is a parameter of the suite (see README.md).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import pkgutil
import uuid
from typing import Any, ClassVar

import foxtive

#: The backend and its broker live outside the test process: a worker can be a
#: subprocess (SIGKILL mid-stream, attempts across a worker restart).
CROSS_PROCESS = "cross_process"
#: The kit can drop foxtive's connections from the broker side.
DROP_CONNECTION = "drop_connection"
CAPABILITIES = frozenset({CROSS_PROCESS, DROP_CONNECTION})


@dataclasses.dataclass(frozen=True)
class DeadRecord:
    """One entry of a backend's native dead-letter queue, as the judge read it."""

    body: bytes
    message_id: str | None
    error_type: str | None
    attempts: int | None
    source_queue: str | None
    raw: dict[str, Any]


class BackendKit:
    """Subclass once per backend; set ``name`` and ``capabilities``."""

    name: ClassVar[str] = ""
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: Kits whose ``name`` is set register themselves here, by name.
    registry: ClassVar[dict[str, type[BackendKit]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            unknown = cls.capabilities - CAPABILITIES
            assert not unknown, f"{cls.__name__}: unknown capabilities {sorted(unknown)}"
            assert cls.name not in BackendKit.registry, f"two kits named {cls.name!r}"
            BackendKit.registry[cls.name] = cls

    def __init__(self, queue: str | None = None) -> None:
        self.queue = queue or f"foxtive-contract-{self.name}-{uuid.uuid4().hex[:10]}"

    # -- every kit ------------------------------------------------------------
    def available(self) -> str | None:
        """``None`` when the broker answers, else why not (the test is skipped)."""
        return None

    def backend(self) -> foxtive.Backend:
        """A backend on ``self.queue``, ready for a pool (and for ``publish``).

        For in-process kits the queue lives in the backend, so every call
        returns the same instance; for brokers each call is a new client, as
        a new process would make."""
        raise NotImplementedError

    def waiting(self) -> int:
        """Messages of the queue still in the broker and not dead-lettered:
        ready, delayed (retries included) or delivered and not settled."""
        raise NotImplementedError

    def dead_letters(self) -> list[DeadRecord]:
        """The native dead-letter queue of ``self.queue``, oldest first."""
        raise NotImplementedError

    def cleanup(self) -> None:
        """Delete everything the test created in the broker."""

    # -- CROSS_PROCESS ----------------------------------------------------------
    def worker_backend(self) -> foxtive.Backend:
        """The backend a worker subprocess consumes with (default: ``backend()``)."""
        return self.backend()

    # -- DROP_CONNECTION --------------------------------------------------------
    def drop_connections(self, pid: int) -> int:
        """Close, from the broker side, foxtive's connections of process ``pid``
        for this queue; returns how many were closed."""
        raise NotImplementedError


def load_kits() -> dict[str, type[BackendKit]]:
    """Import every module of ``tests/contract/kits`` and return the kits by name."""
    from . import kits

    for info in pkgutil.iter_modules(kits.__path__):
        importlib.import_module(f"{kits.__name__}.{info.name}")
    return dict(sorted(BackendKit.registry.items()))


def local_ports(pid: int, remote_port: int) -> set[int]:
    """Local TCP ports of process ``pid``'s sockets connected to ``remote_port``
    (read from /proc: the socket inodes of its file descriptors, matched in
    its network namespace's TCP tables)."""
    inodes = set()
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{table}") as f:
                rows = f.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            local, remote, state, inode = cols[1], cols[2], cols[3], cols[9]
            established = state == "01" and inode in inodes
            if established and int(remote.rsplit(":", 1)[1], 16) == remote_port:
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports
