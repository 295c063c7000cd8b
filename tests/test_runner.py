"""pool.dispatch reports the settlement the engine recorded, whoever made it."""

from __future__ import annotations

import foxtive


async def test_dispatch_returns_the_settlement_the_handler_or_policy_made() -> None:
    async def handler(m: foxtive.Message) -> None:
        if m.body == b"retry-me":
            await m.retry(delay=0)
        elif m.body == b"nack-me":
            await m.nack()
        elif m.body == b"boom":
            raise RuntimeError("boom")
        elif m.body == b"wait":
            raise foxtive.RetryableError("later", delay=5)

    pool = (foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h")
            .with_middleware(foxtive.RetryHandler(max_retries=1)).build())
    assert await pool.dispatch(b"fine") == "success"
    # Settled by the handler itself: its settlement stands and is reported.
    assert await pool.dispatch(b"retry-me") == "retried"
    assert await pool.dispatch(b"nack-me") == "dead_lettered"
    # Settled by the failure policy: a retry while attempts remain.
    assert await pool.dispatch(b"boom") == "retried"
    assert await pool.dispatch(b"wait") == "retried"
    stats = pool.stats()
    assert (stats["processed"], stats["retried"], stats["dead_lettered"]) == (1, 3, 1)


async def test_dispatch_of_a_plain_def_worker_reports_the_policy_outcome() -> None:
    def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError("no")

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    assert await pool.dispatch(b"x") == "dead_lettered"
    assert pool.stats()["dead_lettered"] == 1
