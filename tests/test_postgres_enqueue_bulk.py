"""A transactional enqueue of 10,000 jobs through the caller's psycopg
connection (``publish_many(..., transaction=conn)``): the batch goes to the
server as one array literal per column, built in Rust. Rollback leaves
nothing; commit leaves every job, in order, with its id, body and headers
exactly as given, text that the array syntax treats specially included.
psycopg reads the table as the judge; each test has its own schema."""

from __future__ import annotations

import json

import psycopg
import pytest

import foxtive

from .contract.kits.postgres import POSTGRES_URL, postgres_answers, schema_fixture, waiting_jobs

pytestmark = pytest.mark.skipif(postgres_answers() is not None, reason=str(postgres_answers()))

schema = schema_fixture("fxp_bulk_")

N = 10_000
#: Text the array literal must carry through: its quotes, backslashes,
#: separators, braces, the word NULL, spaces and non-ASCII.
AWKWARD = ['a"b', "c\\d", "e,f", "{g}", "NULL", " h ", "ünï ✓", "", "\\x00"]


def bodies() -> list[bytes]:
    # Every byte value, NUL included, in some body.
    return [bytes([i % 256, (i * 7) % 256]) + AWKWARD[i % len(AWKWARD)].encode()
            for i in range(N)]


def message_ids() -> list[str]:
    return [f"{AWKWARD[i % len(AWKWARD)]}-{i}" for i in range(N)]


def stored(schema: str) -> list[tuple[str, bytes, str, int]]:
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(f'SELECT message_id, body, headers, priority FROM "{schema}".jobs '
                            "WHERE queue = 'bulk' ORDER BY id").fetchall()
    return [(r[0], bytes(r[1]), r[2], r[3]) for r in rows]


async def test_ten_thousand_roll_back_to_nothing(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "bulk", schema=schema)
    with psycopg.connect(POSTGRES_URL) as conn:
        with conn.transaction():
            ids = await backend.publish_many(bodies(), transaction=conn)
            assert len(ids) == N
            raise psycopg.Rollback()
    assert waiting_jobs(schema, "bulk") == 0
    await backend.close()


async def test_ten_thousand_commit_in_order_with_ids_and_headers(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "bulk", schema=schema)
    headers = {"k\"ey": 'v"al\\ue', "n": 1, "f": 1.5, "braces": "{1,2}", "none": "NULL"}
    sent = bodies()
    with psycopg.connect(POSTGRES_URL) as conn:
        with conn.transaction():
            ids = await backend.publish_many(sent, headers=headers, message_ids=message_ids(),
                                             priority=3, transaction=conn)
    assert ids == message_ids()
    rows = stored(schema)
    assert [r[0] for r in rows] == message_ids(), "ids, in the order given"
    assert [r[1] for r in rows] == sent, "bodies byte for byte"
    assert {r[3] for r in rows} == {3}
    stored_headers = dict(json.loads(rows[0][2]))  # typed where JSON is not (floats)
    assert {k: v for k, v in stored_headers.items() if k != "f"} == {
        k: v for k, v in headers.items() if k != "f"}
    assert len({r[2] for r in rows}) == 1

    # A worker reads them back as they were sent.
    seen: dict[str, foxtive.Message] = {}

    async def handler(m: foxtive.Message) -> None:
        seen[m.id] = m

    pool = foxtive.WorkerPoolBuilder("bulk").add_worker(handler, id="h").build()
    assert await pool.run_until_idle_async(backend, timeout=60)
    assert len(seen) == N
    assert all(seen[i].body == b for i, b in zip(ids, sent, strict=True))
    assert seen[ids[-1]].headers == headers
    assert waiting_jobs(schema, "bulk") == 0
    await backend.close()


async def test_delays_and_no_headers_through_the_sync_path(schema: str) -> None:
    backend = foxtive.PostgresBackend(POSTGRES_URL, "bulk", schema=schema)
    await backend.ensure_schema()
    with psycopg.connect(POSTGRES_URL) as conn:
        with conn.transaction():
            ids = backend.enqueue_many_sync(conn, [b"later", b"also"], delay=3600.0)
    with psycopg.connect(POSTGRES_URL) as conn:
        rows = conn.execute(
            f'SELECT message_id, headers, extract(epoch FROM run_at - now()) '
            f'FROM "{schema}".jobs ORDER BY id').fetchall()
    assert [r[0] for r in rows] == ids
    assert all(r[1] == "[]" for r in rows)
    assert all(3500 < float(r[2]) <= 3600 for r in rows), rows
    await backend.close()
