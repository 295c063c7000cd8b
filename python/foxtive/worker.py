"""Workers: what handles a message.

A worker is a plain callable (``async def`` or ``def``) or a
:class:`Worker` subclass. ``async def`` handlers run on the pool's event
loop; plain ``def`` handlers run on the pool's threads.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ._config import seconds
from ._core import RetryInfo
from .errors import ConfigError

if TYPE_CHECKING:
    from ._core import Message

__all__ = ["BatchWorker", "RetryInfo", "Worker"]


class Worker:
    """Base class for workers with hooks.

    ``id`` must be unique within a pool. ``concurrency`` caps this worker's
    messages in flight (under the pool's limit); ``timeout`` cuts off one
    message's processing after that many seconds.
    """

    id: str = ""
    concurrency: int | None = None
    timeout: float | None = None

    async def setup(self) -> None:
        """Runs once, before the first message."""

    async def process(self, message: Message) -> None:
        """Handle one message. Return to ack; raise to run the failure policy."""
        raise NotImplementedError

    async def teardown(self) -> None:
        """Runs once, after the pool drained at shutdown."""

    def should_retry(self, message: Message, error: BaseException, info: RetryInfo) -> bool:
        """Return False to dead-letter at once instead of retrying."""
        return True


class BatchWorker(Worker):
    """A worker that handles messages in batches (see ``BatchMiddleware``)."""

    async def process_batch(self, messages: list[Message]) -> None:
        raise NotImplementedError

    async def process(self, message: Message) -> None:
        await self.process_batch([message])


Handler = Callable[["Message"], Awaitable[None] | None]


def _is_async(fn: Any) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004
    )


class WorkerSpec:
    """One worker as the pool runs it: callable, id, limits and hooks."""

    __slots__ = (
        "call",
        "concurrency",
        "has_should_retry",
        "id",
        "is_async",
        "obj",
        "setup",
        "teardown",
        "timeout",
    )

    def __init__(self, obj: Any, id: str | None = None) -> None:
        self.obj = obj
        if isinstance(obj, Worker):
            wid = id or obj.id
            if not wid:
                raise ConfigError(
                    f"id: {type(obj).__name__} must set a non-empty `id` (unique within the pool)"
                )
            self.call: Any = obj.process
            self.concurrency: int | None = obj.concurrency
            self.timeout: float | None = obj.timeout
            self.setup: Callable[[], Awaitable[None]] | None = obj.setup
            self.teardown: Callable[[], Awaitable[None]] | None = obj.teardown
            self.has_should_retry = type(obj).should_retry is not Worker.should_retry
        elif callable(obj):
            wid = id or getattr(obj, "__qualname__", None) or type(obj).__name__
            self.call = obj
            self.concurrency = getattr(obj, "concurrency", None)
            self.timeout = getattr(obj, "timeout", None)
            self.setup = None
            self.teardown = None
            self.has_should_retry = False
        else:
            raise ConfigError(
                f"worker: expected a callable or a foxtive.Worker, got {type(obj).__name__}"
            )
        self.id: str = str(wid)
        self.is_async = _is_async(self.call)
        # `concurrency` is the engine's to check (_core.WorkerConfig).
        if self.timeout is not None:
            self.timeout = seconds("timeout", self.timeout, positive=True)

    def should_retry(self, message: Message, error: BaseException, info: RetryInfo) -> bool:
        return bool(self.obj.should_retry(message, error, info))
