"""The foxtive pool every broker's foxtive contender runs: an async handler
(or a plain ``def`` worker for ``foxtive sync``), retries for W3 / W6,
concurrency for W2."""

from __future__ import annotations

from typing import Any

from harness import mode
from harness.bodies import sent_of
from harness.mode import sync_work
from harness.recorder import Recorder


def fox_pool(handler: Any, rec: Recorder, ident: Any = None) -> Any:
    """The foxtive pool of every broker: retries for W3 / W6, concurrency for W2.

    With ``ident`` (message -> int id): a plain ``def`` worker (``foxtive
    sync``) calling ``sync_work`` on up to ``CONC`` threads, instead of the
    async ``handler``.
    """
    import foxtive

    if ident is not None:
        class SyncWorker(foxtive.Worker):
            id = "noop"
            concurrency = mode.CONC or None

            def process(self, message: foxtive.Message) -> None:  # type: ignore[override]
                sync_work(rec, ident(message), sent_of(message.body))

        builder = foxtive.WorkerPoolBuilder("bench").add_worker(SyncWorker())
    else:
        builder = foxtive.WorkerPoolBuilder("bench").add_worker(handler, id="noop")
    if mode.W6 or mode.W3:
        builder = builder.with_middleware(foxtive.RetryHandler(
            max_retries=1, initial_backoff=mode.RETRY_DELAY, max_backoff=mode.RETRY_DELAY,
            jitter=False))
    if mode.CONC:
        builder = builder.with_concurrency_limit(mode.CONC)
    return builder.build()
