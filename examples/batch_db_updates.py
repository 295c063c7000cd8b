"""Batch database updates: one INSERT per batch instead of one per message.

BatchMiddleware hands a BatchWorker its messages in batches of `batch_size`,
or after `flush_interval` seconds, whichever comes first (and at shutdown).
Each message is still settled on its own: a row that cannot be stored goes
to the dead-letter queue, the rest of its batch is acked.

    python examples/batch_db_updates.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import json
import sqlite3

import _brokers

import foxtive


class DatabaseWriter(foxtive.BatchWorker):
    id = "db-writer"

    async def setup(self) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE page_views (page TEXT, views INTEGER)")
        self.batches: list[int] = []
        self.stored = 0

    async def process_batch(self, messages: list[foxtive.Message]) -> None:
        rows = []
        for m in messages:
            try:
                update = m.json()
                rows.append((update["page"], int(update["views"])))
            except (foxtive.PayloadError, KeyError, ValueError) as exc:
                await m.dead_letter(f"bad update: {exc!r}")  # only this one
        with self.db:  # one transaction for the whole batch
            self.db.executemany("INSERT INTO page_views VALUES (?, ?)", rows)
        self.batches.append(len(messages))
        self.stored += len(rows)
        # Returning acks every message not settled above; raising would
        # retry them (each through the failure policy).

    async def teardown(self) -> None:
        self.db.close()


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "page-views")
    writer = DatabaseWriter()
    config = foxtive.BatchConfig(batch_size=100, flush_interval=0.5)  # 100 at a time, or 0.5 s
    pool = (
        foxtive.WorkerPoolBuilder("db-pool")
        .with_middleware(foxtive.BatchMiddleware(config))
        .add_worker(writer)
        .with_backend(backend)
        .build()
    )
    updates = [json.dumps({"page": f"/p/{i % 7}", "views": 1}).encode() for i in range(249)]
    updates.insert(123, b"not json")
    await backend.publish_many(updates)

    await pool.run_until_idle_async(timeout=30)

    s = pool.stats()
    print(f"batches of {writer.batches}: stored {writer.stored} rows; "
          f"processed {s['processed']}, dead-lettered {s['dead_lettered']}")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
