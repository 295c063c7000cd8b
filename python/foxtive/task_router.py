"""The worker an app's pool runs for a queue: it reads a message's task
header and runs that task (routes picked once, then called from Rust where
the task needs nothing else), keeping the task's result record when the app
keeps results."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import random
from collections.abc import Callable
from typing import Any

from . import envelope
from ._core import TaskRoutes
from .errors import PayloadError, PermanentError, RetryableError, UnknownTaskError
from .results import failed, succeeded
from .tasks import Task
from .worker import RetryInfo, Worker

#: How long a task runs before its result record says "running".
RUNNING_AFTER = 0.05


async def _settled(timer: asyncio.TimerHandle, marking: list[asyncio.Future[None]]) -> None:
    """Cancel a "running" write not yet started; wait for one that was (its
    failure is not the task's: the outcome's write reports a store that is
    really away)."""
    timer.cancel()
    for write in marking:
        with contextlib.suppress(Exception):
            await write

class TaskRouter(Worker):
    """The one worker of a queue's pool: runs the task the header names."""

    def __init__(self, app: Any, queue: str) -> None:  # a foxtive.App
        self.app = app
        self.queue = queue
        self.id = f"tasks:{queue}"
        # The tasks that need nothing else per message (``async def``, no
        # rate limit, timeout or own backoff, no results kept), registered as
        # their first message passes: those whose arguments are all
        # positional and required are picked and called in Rust (routes),
        # the others here (direct: name -> (decode the body, the function)).
        self._routes = TaskRoutes()
        self._direct: dict[str, tuple[Callable[[bytes], Any], Callable[..., Any]]] = {}

    async def process(self, message: Any) -> None:
        call = self._routes.call(message)
        if call is not None:
            await call
            return
        name = message.header(envelope.TASK_HEADER)
        direct = self._direct.get(name)
        if direct is not None:
            version = message.header(envelope.ENVELOPE_HEADER)
            if version is None or version == 1 or version == "1":
                args, kwargs = direct[0](message.body)
                await direct[1](*args, **kwargs)
                return
        if name is None:
            plain = self.app._plain.get(self.queue)
            if plain is None:
                raise PermanentError(
                    f"message {message.id} on queue {self.queue!r} has no "
                    f"{envelope.TASK_HEADER!r} header and no plain handler is registered "
                    f"for the queue (app.worker({self.queue!r}))")
            result = plain(message)
            if inspect.isawaitable(result):
                await result
            return
        if name.__class__ is bytes:
            name = name.decode("utf-8", "replace")
        version = message.header(envelope.ENVELOPE_HEADER)
        # 1 from foxtive and typed clients, "1" from plain-string ones (redis-cli).
        if version is not None and version != 1 and version != "1":
            raise PayloadError(f"task {name}: envelope version {version!r} is not supported "
                               f"(this worker reads version {envelope.ENVELOPE_VERSION})")
        task = self.app._tasks.get(name)
        if task is None:
            raise UnknownTaskError(f"no task named {name!r} is registered on app "
                                   f"{self.app.name!r} (queue {self.queue!r})")
        if not self.app.results:
            if task.retry_backoff is None:
                if task._direct:  # the next message of this task skips the above
                    conv = task._converter()
                    if conv.fast_decode is not None:
                        self._routes.add(name, conv.fast_decode, task.fn)
                    else:
                        self._direct[name] = (conv.decode_call, task.fn)
                await task._run(message.body)
                return
            try:
                await task._run(message.body)
            except Exception as e:
                self._backoff(task, message, e)
                raise
            return
        store = self.app._result_store()
        # "running" is written only once the task has run for RUNNING_AFTER:
        # a quick task goes from "pending" to its outcome without that round
        # trip on its critical path (the send -> result() latency). A started
        # write is awaited before the outcome's, so it never overwrites it.
        marking: list[asyncio.Future[None]] = []
        timer = asyncio.get_running_loop().call_later(
            RUNNING_AFTER, lambda: marking.append(
                asyncio.ensure_future(store.mark(message.id, "running"))))
        try:
            value = await task._run(message.body)
            encoded = envelope.to_json_value(value)
        except Exception as e:
            final = isinstance(e, PermanentError) or message.attempt > self._retries(task)
            await _settled(timer, marking)
            await store.finish(message.id, failed(e, message.attempt) if final
                               else {"status": "retrying"})
            if task.retry_backoff is not None:
                self._backoff(task, message, e)
            raise
        except BaseException:
            await _settled(timer, marking)
            raise
        await _settled(timer, marking)
        await store.finish(message.id, succeeded(encoded))

    def _backoff(self, task: Task[Any, Any], message: Any, error: Exception) -> None:
        """A task's own ``retry_backoff``: a failure that will be retried
        becomes a RetryableError carrying that policy's delay (the last one
        is raised as it is, so the dead letter names the real error)."""
        policy = task.retry_backoff
        if (policy is None or isinstance(error, PermanentError | RetryableError)
                or message.attempt > self._retries(task)):
            return
        delay = min(policy.max_backoff,
                    policy.initial_backoff * policy.backoff_multiplier ** (message.attempt - 1))
        if policy.jitter:
            delay = random.uniform(delay / 2, delay)
        raise RetryableError(f"{type(error).__name__}: {error}", delay=delay) from error

    def _retries(self, task: Task[Any, Any]) -> int:
        limit = self.app.retry.max_retries
        if task.max_retries is not None:
            limit = min(limit, task.max_retries)
        return int(limit)

    def should_retry(self, message: Any, error: BaseException, info: RetryInfo) -> bool:
        # A task's own max_retries (lower than the app's policy) stops it earlier.
        name = message.header(envelope.TASK_HEADER)
        if name.__class__ is bytes:
            name = name.decode("utf-8", "replace")
        task = self.app._tasks.get(str(name))
        if task is not None and task.max_retries is not None:
            return bool(message.attempt <= task.max_retries)
        return True
