"""The app the schedule tests run with ``foxtive run tests.schedules_app:app``.

A per-second schedule (``every=1``) whose ticks go to a queue no process
consumes (``SCHED_TICK_QUEUE``), so the test reads every enqueued tick from
the broker; the processes themselves consume ``SCHED_WORK_QUEUE``. The broker
is ``$FOXTIVE_BROKER``; the lease ``$FOXTIVE_SCHEDULE_LEASE``; the result store
``$SCHED_RESULTS`` (where a RabbitMQ app's lease and last ticks live).
"""

from __future__ import annotations

import os
import time

import foxtive

app = foxtive.App(os.environ.get("SCHED_APP", "schedules-test"),
                  results=os.environ.get("SCHED_RESULTS") or None)


@app.task(queue=os.environ.get("SCHED_WORK_QUEUE", "schedules-work"), name="schedules.tick")
def tick() -> None:
    """Never runs here: its ticks wait in the tick queue for the test to read."""


app.schedule(tick, every=1, name="per-second",
             queue=os.environ.get("SCHED_TICK_QUEUE", "schedules-ticks"),
             catch_up=os.environ.get("SCHED_CATCH_UP", "latest"))


@app.task(queue=os.environ.get("SCHED_WORK_QUEUE", "schedules-work"), name="schedules.hog")
def hog(seconds: float) -> None:
    """Hold the GIL for about ``seconds``: one C call (``sum`` over a range)
    that never lets another thread run Python."""
    samples = []
    for _ in range(3):  # the fastest of three: a busy machine slows some
        t0 = time.perf_counter()
        sum(range(1_000_000))
        samples.append(time.perf_counter() - t0)
    per = min(samples) / 1_000_000
    start = time.perf_counter()
    sum(range(int(seconds / per)))
    print(f"hogged {time.perf_counter() - start:.2f}", flush=True)
