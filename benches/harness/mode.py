"""A child process's mode, the workload it runs: module globals set once
by ``set_mode(workload)`` in every child (publisher or consumer) before it
builds anything, and the work every contender's handler does for it
(``sync_work`` / ``async_work``: record the id, fail for W3 / W6, sleep for
W2), which reads them per message as plain globals of this module (as fast
as before the split: no attribute lookup per message).

Elsewhere read them as ``mode.CONC`` at call time, never ``from
harness.mode import CONC`` (a copy of the value from before ``set_mode``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from harness.config import W2_CONC, W2_SLEEP, W3_DELAY, W6_DELAY
from harness.tasks import TASK_STR, is_tasks

if TYPE_CHECKING:
    from harness.recorder import Recorder

SLEEP = 0.0  # set in the child for W2
CONC = 0
W6 = False  # set in the child for W6: every handler fails, retry in an hour
W3 = False  # set in the child for W3: ids divisible by 10 fail on their first attempt
RETRY_DELAY = 0.0  # W3_DELAY or W6_DELAY in the child
TASK_ARG: tuple[str, ...] = ()  # tasks-*: the peers' tasks take (i, TASK_STR)
_failed_once: set[int] = set()


def set_mode(workload: str) -> None:
    """Child side (publishers and consumers): the workload's globals."""
    global SLEEP, CONC, W6, W3, RETRY_DELAY, TASK_ARG
    if is_tasks(workload):
        TASK_ARG = (TASK_STR,)
    if workload.startswith("w2"):
        SLEEP, CONC = W2_SLEEP, W2_CONC
    W3, W6 = workload.startswith("w3"), workload.startswith("w6")
    RETRY_DELAY = W3_DELAY if W3 else W6_DELAY if W6 else 0.0
    if W3 or W6:
        import logging

        logging.disable(logging.ERROR)  # 100k failure tracebacks are not the point


def w3_should_fail(i: int) -> bool:
    if W3 and i % 10 == 0 and i not in _failed_once:
        _failed_once.add(i)
        return True
    return False


class W6Error(Exception):
    """W6: fail every first attempt."""


def sync_work(rec: Recorder, i: int, sent: float = 0.0) -> None:
    if w3_should_fail(i):
        raise W6Error(i)
    rec.hit(i, sent)
    if W6:
        raise W6Error(i)
    if SLEEP:
        time.sleep(SLEEP)


def fox_retry(delay: float) -> Exception:
    import foxtive

    return foxtive.RetryableError("retry", delay=delay)


async def async_work(rec: Recorder, i: int, sent: float = 0.0,
                     retry: Any = fox_retry) -> None:
    """``retry(delay)`` is the exception that asks the framework for a retry."""
    if w3_should_fail(i):
        raise retry(RETRY_DELAY)
    rec.hit(i, sent)
    if W6:
        raise retry(RETRY_DELAY)
    if SLEEP:
        import asyncio

        await asyncio.sleep(SLEEP)
