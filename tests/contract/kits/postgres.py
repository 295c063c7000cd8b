"""PostgreSQL on 127.0.0.1:5432, database ``test`` (or FOXTIVE_POSTGRES_URL);
judged by psycopg 3. Each kit has its own schema, derived from its queue so a
worker subprocess finds the same one, and dropped by ``cleanup()``."""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import foxtive

from ..kit import CROSS_PROCESS, DROP_CONNECTION, BackendKit, DeadRecord, local_ports

POSTGRES_URL = os.environ.get("FOXTIVE_POSTGRES_URL",
                              "postgresql://postgres@127.0.0.1:5432/test")
#: The judge's sessions carry this name, so dropping foxtive's never drops them.
JUDGE_NAME = "foxtive-contract-judge"


def judge_connection() -> Any:
    import psycopg

    return psycopg.connect(POSTGRES_URL, autocommit=True, application_name=JUDGE_NAME,
                           connect_timeout=5)


def schema_for(queue: str) -> str:
    return "fxc_" + hashlib.sha256(queue.encode()).hexdigest()[:16]


def postgres_answers() -> str | None:
    try:
        with judge_connection() as conn:
            conn.execute("SELECT 1")
    except Exception as e:  # any failure means "not here"
        return f"no PostgreSQL at {foxtive._core.redact_url(POSTGRES_URL)}: {e}"
    return None


def drop_schema(schema: str) -> None:
    with judge_connection() as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def schema_fixture(prefix: str = "fxp_") -> Callable[[], Iterator[str]]:
    """A ``schema`` fixture for a test module: a new schema name per test
    (``prefix`` + random), dropped afterwards. In the module:
    ``schema = schema_fixture("fxp_mine_")``."""

    @pytest.fixture
    def schema() -> Iterator[str]:
        name = f"{prefix}{uuid.uuid4().hex[:12]}"
        try:
            yield name
        finally:
            drop_schema(name)

    return schema


def sessions(app: str) -> list[int]:
    """The server processes of ``app``'s sessions (its ``application_name``;
    one per connection)."""
    with judge_connection() as conn:
        rows = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                            (app,)).fetchall()
    return [r[0] for r in rows]


def terminate_sessions(app: str) -> list[int]:
    """End every session of ``app`` (a test's worker, nobody else's): the
    server processes ended."""
    with judge_connection() as conn:
        rows = conn.execute(
            "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s", (app,)).fetchall()
    return [pid for pid, done in rows if done]


def waiting_jobs(schema: str, queue: str) -> int:
    """Rows of ``queue`` in ``schema``'s jobs table: ready, delayed or leased."""
    with judge_connection() as conn:
        row = conn.execute(f'SELECT count(*) FROM "{schema}".jobs WHERE queue = %s',
                           (queue,)).fetchone()
    return int(row[0]) if row else 0


class PostgresKit(BackendKit):
    name = "postgres"
    capabilities = frozenset({CROSS_PROCESS, DROP_CONNECTION})

    def __init__(self, queue: str | None = None) -> None:
        super().__init__(queue)
        self.schema = schema_for(self.queue)

    def available(self) -> str | None:
        return postgres_answers()

    def backend(self) -> foxtive.PostgresBackend:
        return foxtive.PostgresBackend(POSTGRES_URL, self.queue, schema=self.schema,
                                       lease_timeout=5.0, poll_interval=0.5)

    def worker_backend(self) -> foxtive.PostgresBackend:
        # A short lease: a SIGKILLed worker's jobs come back within seconds.
        return foxtive.PostgresBackend(POSTGRES_URL, self.queue, schema=self.schema,
                                       lease_timeout=2.0, poll_interval=0.5)

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        import psycopg

        with judge_connection() as conn:
            try:
                return conn.execute(sql.format(s=f'"{self.schema}"'), (self.queue,)).fetchall()
            except psycopg.errors.UndefinedTable:
                return []  # nothing published yet: no tables

    def waiting(self) -> int:
        rows = self._rows("SELECT count(*) FROM {s}.jobs WHERE queue = %s")
        return int(rows[0][0]) if rows else 0

    def dead_letters(self) -> list[DeadRecord]:
        rows = self._rows("SELECT message_id, body, error_type, attempts, queue, error_message, "
                          "worker_id FROM {s}.dead_letters WHERE queue = %s ORDER BY id")
        return [DeadRecord(body=bytes(r[1]), message_id=r[0], error_type=r[2], attempts=r[3],
                           source_queue=r[4],
                           raw={"error_message": r[5], "worker_id": r[6]})
                for r in rows]

    def drop_connections(self, pid: int) -> int:
        ports = sorted(local_ports(pid, 5432))
        with judge_connection() as conn:
            rows = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'foxtive' AND client_port = ANY(%s)", (ports,)
            ).fetchall()
        return sum(1 for (done,) in rows if done)

    def cleanup(self) -> None:
        drop_schema(self.schema)
