"""SQLite in a temporary file (one per test, named after the queue so worker
subprocesses find it); judged by the stdlib ``sqlite3`` module."""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator

import pytest

import foxtive

from ..kit import CROSS_PROCESS, BackendKit, DeadRecord

#: Short enough that a SIGKILLed worker's jobs come back within seconds;
#: renewed every third of it while handlers run.
LEASE = 2.0


def db_path(queue: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"{queue}.db")


class SqliteKit(BackendKit):
    name = "sqlite"
    capabilities = frozenset({CROSS_PROCESS})

    def __init__(self, queue: str | None = None) -> None:
        super().__init__(queue)
        self.path = db_path(self.queue)

    def backend(self) -> foxtive.SqliteBackend:
        return foxtive.SqliteBackend(self.path, self.queue, lease_timeout=LEASE)

    def _query(self, sql: str) -> list[tuple[object, ...]]:
        if not os.path.exists(self.path):
            return []
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            return conn.execute(sql, (self.queue,)).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []
            raise
        finally:
            conn.close()

    def waiting(self) -> int:
        # Ready, delayed (retries) and leased rows alike: a job is a row
        # until it is acked (deleted) or dead-lettered (moved).
        rows = self._query("SELECT count(*) FROM foxtive_jobs WHERE queue = ?")
        return int(rows[0][0]) if rows else 0  # type: ignore[call-overload]

    def dead_letters(self) -> list[DeadRecord]:
        rows = self._query(
            "SELECT body, original_id, error_type, attempts, queue, error_message "
            "FROM foxtive_dead_letters WHERE queue = ? ORDER BY id")
        return [DeadRecord(body=bytes(r[0]),  # type: ignore[call-overload]
                           message_id=str(r[1]), error_type=str(r[2]),
                           attempts=int(r[3]),  # type: ignore[call-overload]
                           source_queue=str(r[4]),
                           raw={"error_message": r[5]}) for r in rows]

    def cleanup(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            try:
                os.remove(self.path + suffix)
            except FileNotFoundError:
                pass


def kit_fixture() -> Callable[[], Iterator[SqliteKit]]:
    """A ``kit`` fixture for a test module: a new SqliteKit (its own file)
    per test, cleaned up afterwards. In the module: ``kit = kit_fixture()``."""

    @pytest.fixture
    def kit() -> Iterator[SqliteKit]:
        k = SqliteKit()
        try:
            yield k
        finally:
            k.cleanup()

    return kit
