"""Plain ``def`` workers: threads are added while handlers wait off the CPU
and messages wait (README, "Workers")."""

from __future__ import annotations

import threading

import foxtive

from .redis_support import running_pool, wait_for


def test_blocked_handlers_do_not_hold_back_waiting_messages() -> None:
    backend = foxtive.MemoryBackend("sync-threads")
    backend.publish_many_sync([b"block-a", b"block-b", b"after-0", b"after-1"])
    release = threading.Event()
    started: list[bytes] = []

    class Blocking(foxtive.Worker):
        id = "blocking"
        concurrency = 4

        def process(self, message: foxtive.Message) -> None:  # type: ignore[override]
            started.append(message.body)
            if message.body.startswith(b"block"):
                release.wait(60)  # off the CPU, like a slow HTTP call

    pool = (foxtive.WorkerPoolBuilder("p").add_worker(Blocking())
            .with_shutdown_timeout(5.0).build())
    try:
        with running_pool(pool, backend):
            wait_for(lambda: len(started) >= 2, 10, "both blockers to start")
            try:
                wait_for(lambda: len(started) == 4, 5,
                         "the waiting messages to start while two of four threads block")
            finally:
                release.set()
    finally:
        release.set()
    assert sorted(started) == [b"after-0", b"after-1", b"block-a", b"block-b"]
