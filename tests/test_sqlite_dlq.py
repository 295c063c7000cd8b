"""``foxtive dlq list|show|replay|purge --broker sqlite:///x.db --queue q``:
the CLI reaches the file's dead-letter table through the backend the URL
names (its ``dead_letter_queue()``), as for RabbitMQ and Redis. A real
SQLite file; the stdlib ``sqlite3`` module judges."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import foxtive

from .conftest import fast_retries
from .contract.kits.sqlite import SqliteKit, kit_fixture

kit = kit_fixture()


def foxtive_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foxtive", "--log-level", "ERROR", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def dead_letter_three(backend: foxtive.SqliteBackend) -> None:
    async def publish() -> None:
        for i in range(3):
            await backend.publish(f"body-{i}".encode(), headers={"tenant": "acme"},
                                  message_id=f"m-{i}")

    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError(f"cannot ship {m.body.decode()}")

    asyncio.run(publish())
    pool = (foxtive.WorkerPoolBuilder("sqlite-dlq").with_middleware(fast_retries(0))
            .add_worker(handler, id="h").with_shutdown_timeout(5.0).build())
    assert pool.run_until_idle(backend, timeout=30)
    assert pool.stats()["dead_lettered"] == 3


def count(path: str, table: str, queue: str) -> int:
    conn = sqlite3.connect(path, timeout=10)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE queue = ?",
                                (queue,)).fetchone()[0])
    finally:
        conn.close()


def test_cli_lists_shows_replays_and_purges_a_sqlite_queue(kit: SqliteKit,
                                                           tmp_path: Path) -> None:
    backend = kit.backend()
    dead_letter_three(backend)
    # Another queue in the same file: the CLI must not touch its dead letters.
    other = foxtive.SqliteBackend(kit.path, kit.queue + "-other", lease_timeout=2.0)
    dead_letter_three(other)
    url = f"sqlite:///{kit.path}"  # an absolute path: sqlite:////tmp/...
    broker = ("--broker", url, "--queue", kit.queue)

    listed = foxtive_cli("dlq", "list", *broker, "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert sorted(r["original_id"] for r in records) == ["m-0", "m-1", "m-2"]
    for r in records:
        assert r["source_queue"] == kit.queue and r["error_type"] == "PermanentError"
        assert r["error_message"] == f"cannot ship body-{r['original_id'][2:]}"
        assert r["worker_id"] == "h" and r["attempts"] == 1
        assert r["failed_at"] > time.time() - 300
    plain = foxtive_cli("dlq", "list", *broker, cwd=tmp_path)
    assert plain.returncode == 0 and "3 dead letter(s)" in plain.stdout, plain.stderr

    shown = foxtive_cli("dlq", "show", "m-2", *broker, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    [one] = json.loads(shown.stdout)
    assert one["body"] == "body-2" and one["headers"]["tenant"] == "acme"
    missing = foxtive_cli("dlq", "show", "nope", *broker, cwd=tmp_path)
    assert missing.returncode == 1 and json.loads(missing.stdout) == []

    replayed = foxtive_cli("dlq", "replay", "m-2", *broker, cwd=tmp_path)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
    # Moved in one transaction: out of the table, back in the queue, once.
    assert count(kit.path, "foxtive_dead_letters", kit.queue) == 2
    assert count(kit.path, "foxtive_jobs", kit.queue) == 1
    seen: list[tuple[str, bytes, int]] = []

    async def record(m: foxtive.Message) -> None:
        seen.append((m.id, m.body, m.attempt))

    ok = foxtive.WorkerPoolBuilder("sqlite-dlq-ok").add_worker(record, id="ok").build()
    assert ok.run_until_idle(backend, timeout=30)
    assert seen == [("m-2", b"body-2", 1)], "a replay starts the job afresh"

    purged = foxtive_cli("dlq", "purge", "--yes", *broker, cwd=tmp_path)
    assert purged.returncode == 0 and "purged 2" in purged.stdout, purged.stderr
    assert count(kit.path, "foxtive_dead_letters", kit.queue) == 0
    assert count(kit.path, "foxtive_dead_letters", kit.queue + "-other") == 3
    assert kit.waiting() == 0


def test_cli_on_a_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    res = foxtive_cli("dlq", "list", "--broker", "sqlite:///typo.db", "--queue", "q",
                      cwd=tmp_path)
    assert res.returncode != 0, res.stdout
    assert "check --queue and the --broker URL" in res.stderr and "sqlite:///typo.db" in res.stderr
    assert not (tmp_path / "typo.db").exists(), "listing must not create the file"
    # SQLite's dead letters are found by --queue; they have no separate name.
    named = foxtive_cli("dlq", "list", "--broker", "sqlite:///typo.db", "--queue", "q",
                        "--dead-letter-queue", "q.dlq", cwd=tmp_path)
    assert named.returncode != 0 and "--dead-letter-queue" in named.stderr, named.stderr
    no_queue = foxtive_cli("dlq", "list", "--broker", "sqlite:///typo.db", cwd=tmp_path)
    assert no_queue.returncode != 0 and "--queue" in no_queue.stderr
