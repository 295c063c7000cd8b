"""``send_many(..., transaction=conn)`` is one batched insert through the
caller's connection (issue 14): one ``executemany`` on sqlite3, one INSERT
statement on PostgreSQL (counted by a statement-level trigger, psycopg 3 sync
and async); roll back and no row exists, commit and every row does (counted
by sqlite3 / psycopg on their own connections). Each test has its own file
or schema and removes it."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import foxtive

from .conftest import fast_retries
from .contract.kits.postgres import POSTGRES_URL, drop_schema, judge_connection, postgres_answers

needs_pg = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))

N = 200


class CountingConnection(sqlite3.Connection):
    """A sqlite3 connection that counts the calls inserting jobs."""

    job_inserts = 0

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if "INSERT INTO foxtive_jobs" in sql:
            self.job_inserts += 1
        return super().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        if "INSERT INTO foxtive_jobs" in sql:
            self.job_inserts += 1
        return super().executemany(sql, *args)


def make_app(url: str, results: bool) -> tuple[foxtive.App, Any, list[int]]:
    app = foxtive.App(f"txbatch-{uuid.uuid4().hex[:8]}", broker=url, results=results or None,
                      retry=fast_retries(1))
    ran: list[int] = []

    @app.task(queue="txbatch", name="add")
    async def add(i: int, label: str) -> int:
        ran.append(i)
        return i

    return app, add, ran


def lite_counts(path: Path) -> tuple[int, int]:
    with sqlite3.connect(path) as judge:
        jobs = judge.execute("SELECT count(*) FROM foxtive_jobs WHERE queue = 'txbatch'"
                             ).fetchone()[0]
        tables = {r[0] for r in judge.execute("SELECT name FROM sqlite_master")}
        results = (judge.execute("SELECT count(*) FROM foxtive_results").fetchone()[0]
                   if "foxtive_results" in tables else 0)
    return int(jobs), int(results)


@pytest.mark.parametrize("results", [False, True])
async def test_sqlite_send_many_in_a_transaction_is_one_executemany(
        tmp_path: Path, results: bool) -> None:
    path = tmp_path / "txbatch.db"
    app, add, ran = make_app(f"sqlite:///{path}", results)
    calls = [(i, "x") for i in range(N)]
    conn = sqlite3.connect(path, factory=CountingConnection)
    assert isinstance(conn, CountingConnection)
    try:
        await add.options(transaction=conn).send_many(calls)
        assert conn.job_inserts == 1
        conn.rollback()
        assert lite_counts(path) == (0, 0)
        add.options(transaction=conn).send_many_sync(calls)
        await add.options(transaction=conn, priority=3).send_many(calls[:10])
        assert conn.job_inserts == 3
        conn.commit()
    finally:
        conn.close()
    assert lite_counts(path) == (N + 10, (N + 10) if results else 0)
    assert await app.run_until_idle_async(timeout=60.0)
    assert sorted(ran) == sorted(list(range(N)) + list(range(10)))
    await app.aclose()


@pytest.fixture
def pg_schema() -> Iterator[str]:
    name = f"fx_txbatch_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        drop_schema(name)


def count_statements(schema: str) -> None:
    """A statement-level trigger on ``jobs``: one row in ``stmts`` per INSERT
    statement, however many rows it inserts."""
    with judge_connection() as judge:
        judge.execute(f'CREATE TABLE "{schema}".stmts (n int)')
        judge.execute(f'CREATE FUNCTION "{schema}".count_stmt() RETURNS trigger '
                      f'LANGUAGE plpgsql AS $$ BEGIN INSERT INTO "{schema}".stmts VALUES (1); '
                      "RETURN NULL; END $$")
        judge.execute(f'CREATE TRIGGER count_stmt AFTER INSERT ON "{schema}".jobs '
                      f'FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".count_stmt()')


def pg_counts(schema: str) -> tuple[int, int, int]:
    """(jobs, result records, INSERT statements on jobs) as psycopg sees them."""
    with judge_connection() as judge:
        jobs = judge.execute(f'SELECT count(*) FROM "{schema}".jobs').fetchone()
        res = judge.execute(f'SELECT count(*) FROM "{schema}".results').fetchone()
        stmts = judge.execute(f'SELECT count(*) FROM "{schema}".stmts').fetchone()
    assert jobs is not None and res is not None and stmts is not None
    return int(jobs[0]), int(res[0]), int(stmts[0])


@needs_pg
@pytest.mark.parametrize("results", [False, True])
async def test_postgres_send_many_in_a_transaction_is_one_statement(
        pg_schema: str, results: bool) -> None:
    app, add, ran = make_app(f"{POSTGRES_URL}?schema={pg_schema}", results)
    await app.backend("txbatch").ensure_schema()
    count_statements(pg_schema)
    calls = [(i, "x") for i in range(N)]
    # psycopg 3 async connection.
    async with await psycopg.AsyncConnection.connect(POSTGRES_URL) as conn:
        await add.options(transaction=conn).send_many(calls)
        await conn.rollback()
        assert pg_counts(pg_schema) == (0, 0, 0)  # the trigger's rows rolled back too
        await add.options(transaction=conn).send_many(calls)
        await conn.commit()
    assert pg_counts(pg_schema) == (N, N if results else 0, 1)
    # psycopg 3 sync connection, from sync code and from async code.
    with psycopg.connect(POSTGRES_URL) as sync_conn:
        add.options(transaction=sync_conn).send_many_sync(calls)
        sync_conn.rollback()
        assert pg_counts(pg_schema) == (N, N if results else 0, 1)
        add.options(transaction=sync_conn).send_many_sync(calls)
        await add.options(transaction=sync_conn, priority=5).send_many(calls[:10])
        sync_conn.commit()
    assert pg_counts(pg_schema) == (2 * N + 10, (2 * N + 10) if results else 0, 3)
    assert await app.run_until_idle_async(timeout=60.0)
    assert len(ran) == 2 * N + 10
    await app.aclose()
