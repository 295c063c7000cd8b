"""``foxtive db migrate``: creates the SQL backends' tables or brings them
forward, printing the version before and after (judged with psycopg and
the stdlib sqlite3)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from foxtive.sqlite import enqueue

from .contract.kits.postgres import POSTGRES_URL, judge_connection, postgres_answers, schema_fixture

# The latest schema versions this build knows (append-only migration lists:
# SQLite 4 = priority + dedup, PostgreSQL 5 = dedup).
SQLITE_LATEST = 4
PG_LATEST = 5


def migrate(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FOXTIVE_BROKER"}
    return subprocess.run([sys.executable, "-m", "foxtive", "db", "migrate", *args],
                          capture_output=True, text=True, timeout=60, env=env)


def tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def test_sqlite_new_file_then_up_to_date(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    first = migrate("--broker", f"sqlite:///{path}")
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"SQLite file {path}: version 0 before, {SQLITE_LATEST} after"
    assert {"foxtive_jobs", "foxtive_dead_letters", "foxtive_finished_jobs",
            "foxtive_results"} <= tables(path)
    again = migrate("--broker", f"sqlite:///{path}")
    up_to_date = f"version {SQLITE_LATEST} before, {SQLITE_LATEST} after (up to date)"
    assert again.stdout.strip().endswith(up_to_date), again.stdout


def test_sqlite_version_1_file_is_brought_forward(tmp_path: Path) -> None:
    """A file made by a foxtive with only version 1 (here: its DDL, run
    through the transactional enqueue's statements) keeps its jobs."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        ids = enqueue(conn, "q", [b"kept"])
        conn.execute("INSERT INTO foxtive_schema (version) VALUES (1)")
    assert "foxtive_finished_jobs" not in tables(path)
    out = migrate("--broker", f"sqlite:///{path}")
    assert out.stdout.strip().endswith(f"version 1 before, {SQLITE_LATEST} after"), (
        out.stdout, out.stderr)
    assert "foxtive_finished_jobs" in tables(path)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT message_id, body FROM foxtive_jobs").fetchall() == [
            (ids[0], b"kept")]


def test_a_bad_broker_is_a_clear_error() -> None:
    out = migrate("--broker", "redis://127.0.0.1:6379")
    assert out.returncode == 2
    assert "postgresql:// and sqlite:///" in out.stderr
    none = migrate()
    assert none.returncode == 2 and "FOXTIVE_BROKER" in none.stderr


schema = schema_fixture("fxp_sqlops_cli_")


@pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))
def test_postgres_new_schema_old_schema_and_redaction(schema: str) -> None:
    url = POSTGRES_URL.replace("postgresql://postgres@", "postgresql://postgres:s3cret@")
    first = migrate("--broker", url, "--schema", schema)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith(f"schema {schema}: version 0 before, {PG_LATEST} after")
    assert "s3cret" not in first.stdout + first.stderr
    # Back to version 1 (what an older foxtive made), then forward again.
    with judge_connection() as conn:
        conn.execute(f'DROP TABLE "{schema}".finished_jobs, "{schema}".results, '
                     f'"{schema}".dedup')
        conn.execute(f'DROP INDEX "{schema}".jobs_next')
        conn.execute(f'DROP FUNCTION "{schema}".notify_results()')
        conn.execute(f'DELETE FROM "{schema}".schema_version WHERE version > 1')
    second = migrate("--broker", f"{POSTGRES_URL}?schema={schema}")
    assert second.stdout.strip().endswith(f"version 1 before, {PG_LATEST} after"), second.stdout
    with judge_connection() as conn:
        versions = conn.execute(
            f'SELECT array_agg(version ORDER BY version) FROM "{schema}".schema_version'
        ).fetchone()
        assert versions == (list(range(1, PG_LATEST + 1)),)
        assert conn.execute(f'SELECT count(*) FROM "{schema}".finished_jobs').fetchone() == (0,)
    third = migrate("--broker", url, "--schema", schema)
    assert third.stdout.strip().endswith(
        f"version {PG_LATEST} before, {PG_LATEST} after (up to date)")
