"""Apps: tasks, their queues and the broker they travel on.

    app = foxtive.App("shop", broker="redis://127.0.0.1:6379/0")

    @app.task
    async def send_email(to: str, subject: str) -> None: ...

    await send_email.send("ann@example.com", subject="Hi")
    app.pool("default").run()          # or: foxtive run shop.tasks:app

Each queue is consumed by one pool whose one worker (a router) runs the task
each message's ``foxtive-task`` header names; messages without that header go
to the plain handler registered with :meth:`App.worker`, if any.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import datetime as _dt
import functools
import inspect
import os
import signal
import threading
from collections.abc import Callable, Coroutine, Iterable
from typing import Any, ParamSpec, TypeVar, overload

from . import schedules as _schedules
from ._config import seconds
from .backends import MemoryBackend
from .errors import (
    ConfigError,
)
from .nats import NatsBackend
from .policies import RetryHandler
from .pool import WorkerPool, WorkerPoolBuilder
from .publishing import Publisher
from .results import MemoryResultStore, RedisResultStore, ResultStore
from .results_nats import NatsResultStore
from .results_sql import PostgresResultStore, SqliteResultStore
from .task_router import TaskRouter
from .tasks import Task
from .urls import backend_from_url

__all__ = ["DEFAULT_BROKER", "App"]

P = ParamSpec("P")
R = TypeVar("R")

#: Threads an app gives its plain ``def`` tasks and handlers (all queues).
SYNC_THREADS = 32

#: The broker when neither ``broker=`` nor ``$FOXTIVE_BROKER`` names one.
DEFAULT_BROKER = "sqlite:///foxtive.db"

_T = TypeVar("_T")



class _LoopThread:
    """One event loop on one daemon thread, owned by an app: ``send_sync``
    from threads with no loop (Django, Flask, scripts) runs its publish here
    instead of starting a loop per call."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever,
                                       name=f"foxtive-app-{name}", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("send_sync called on the app's own loop thread; use send")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5.0)
        if not self.thread.is_alive():
            self.loop.close()


class App:
    """Tasks and the broker they travel on.

    ``broker``: a URL (``backend_from_url``), a callable ``queue -> backend``,
    or omitted: ``$FOXTIVE_BROKER``, else ``"sqlite:///foxtive.db"``.
    ``retry``: the default failure policy of its tasks (and of unknown task
    names), ``RetryHandler()`` unless given."""

    def __init__(self, name: str, broker: str | Callable[[str], Any] | None = None, *,
                 results: bool | str | None = None,
                 result_ttl: float | _dt.timedelta = 86400.0,
                 retry: RetryHandler | None = None) -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("name: must be a non-empty string")
        self.name = name
        if broker is None:
            broker = os.environ.get("FOXTIVE_BROKER") or DEFAULT_BROKER
        if not isinstance(broker, str) and not callable(broker):
            raise ConfigError(f"broker: expected a URL or a callable queue -> backend, "
                              f"got {type(broker).__name__}")
        self.broker = broker
        if results is not None and not isinstance(results, bool | str):
            raise ConfigError(f"results: expected None, True or a store URL, got {results!r}")
        self.results = results
        self.result_ttl: float = seconds("result_ttl", result_ttl, positive=True)
        if retry is not None and not isinstance(retry, RetryHandler):
            raise ConfigError(f"retry: expected a foxtive.RetryHandler, got "
                              f"{type(retry).__name__}")
        self.retry = retry if retry is not None else RetryHandler()
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._schedules: dict[str, _schedules.Schedule] = {}
        self.scheduler: _schedules.SchedulerRunner | None = None  # while running
        self._plain: dict[str, Callable[[Any], Any]] = {}
        self._producers: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._loop_thread: _LoopThread | None = None
        self._publisher = Publisher(self)
        self._results_store: ResultStore | None = None
        self._running: list[WorkerPool] = []
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None
        if results:
            self._result_store()  # fail now on a broker without a store

    def __repr__(self) -> str:
        return f"App({self.name!r}, tasks={len(self._tasks)})"

    # -- registering ---------------------------------------------------------
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(self, fn: None = None, /, *, queue: str = "default", name: str | None = None,
             max_retries: int | None = None, retry_backoff: RetryHandler | None = None,
             timeout: float | _dt.timedelta | None = None, rate_limit: str | None = None,
             priority: int | None = None) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[P, R] | None = None, /, *, queue: str = "default",
             name: str | None = None, max_retries: int | None = None,
             retry_backoff: RetryHandler | None = None,
             timeout: float | _dt.timedelta | None = None, rate_limit: str | None = None,
             priority: int | None = None) -> Task[P, R] | Callable[[Callable[P, R]], Task[P, R]]:
        """Register a function as a task: ``@app.task`` or ``@app.task(queue=..., ...)``."""

        def register(f: Callable[P, R]) -> Task[P, R]:
            if not callable(f):
                raise ConfigError(f"task: expected a function, got {type(f).__name__}")
            if not isinstance(queue, str) or not queue:
                raise ConfigError("queue: must be a non-empty string")
            if retry_backoff is not None and not isinstance(retry_backoff, RetryHandler):
                raise ConfigError("retry_backoff: expected a foxtive.RetryHandler")
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            t = Task(self, f, name=task_name, queue=queue, max_retries=max_retries,
                     retry_backoff=retry_backoff,
                     timeout=None if timeout is None else seconds("timeout", timeout),
                     rate_limit=rate_limit, priority=priority)
            with self._lock:
                if task_name in self._tasks and self._tasks[task_name].fn is not f:
                    raise ConfigError(f"name: a task named {task_name!r} is already registered "
                                      f"on app {self.name!r}")
                self._tasks[task_name] = t
            return t

        if fn is not None:
            return register(fn)
        return register

    def worker(self, queue: str = "default"
               ) -> Callable[[Callable[[Any], Any]], Callable[[Any], Any]]:
        """Register a plain message handler (``async def`` or ``def``) for the
        messages of ``queue`` that carry no ``foxtive-task`` header."""

        def register(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
            if not callable(fn):
                raise ConfigError("worker: expected a callable taking a foxtive.Message")
            if inspect.iscoroutinefunction(fn):
                self._plain[queue] = fn
            else:
                async def on_thread(message: Any) -> Any:
                    loop = asyncio.get_running_loop()
                    ctx = contextvars.copy_context()
                    return await loop.run_in_executor(self._executor(),
                                                      functools.partial(ctx.run, fn, message))
                self._plain[queue] = on_thread
            return fn

        return register

    def periodic(self, *, cron: str | None = None, every: float | _dt.timedelta | None = None,
                 tz: str = "UTC", name: str | None = None, queue: str | None = None,
                 catch_up: str = "latest") -> Callable[[Callable[..., R]], Task[Any, R]]:
        """Register a function that needs no arguments as a task and run it on
        a schedule (``cron`` or ``every``): see :mod:`foxtive.schedules`."""
        return _schedules.periodic(self, cron=cron, every=every, tz=tz, name=name,
                                  queue=queue, catch_up=catch_up)

    def schedule(self, task: Task[Any, R], *, cron: str | None = None,
                 every: float | _dt.timedelta | None = None, tz: str = "UTC",
                 name: str | None = None, queue: str | None = None,
                 catch_up: str = "latest", args: Iterable[Any] = (),
                 kwargs: dict[str, Any] | None = None) -> _schedules.Schedule:
        """Enqueue ``task(*args, **kwargs)`` on a schedule (``cron`` or
        ``every``); the default name is the task's: see :mod:`foxtive.schedules`."""
        return _schedules.add(self, task, cron=cron, every=every, tz=tz, name=name,
                             queue=queue, catch_up=catch_up, args=tuple(args), kwargs=kwargs)

    @property
    def schedules(self) -> dict[str, _schedules.Schedule]:
        """The registered schedules by name."""
        return dict(self._schedules)

    @property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The registered tasks by name."""
        return dict(self._tasks)

    @property
    def queues(self) -> list[str]:
        """Every queue a task or plain handler of this app uses, sorted."""
        return sorted({t.queue for t in self._tasks.values()} | set(self._plain))

    # -- backends ------------------------------------------------------------
    def _new_backend(self, queue: str) -> Any:
        if isinstance(self.broker, str):
            return backend_from_url(self.broker, queue)
        return self.broker(queue)

    def backend(self, queue: str) -> Any:
        """The backend this app publishes ``queue``'s tasks on (one per queue)."""
        with self._lock:
            b = self._producers.get(queue)
            if b is None:
                b = self._producers[queue] = self._new_backend(queue)
            return b

    def pool(self, queue: str = "default", *, concurrency_limit: int | None = None,
             shutdown_timeout: float | None = None) -> WorkerPool:
        """The :class:`WorkerPool` that runs ``queue``'s tasks: the app's retry
        policy, one router worker, and the queue's backend (the publishing one
        for in-process memory backends, else a consumer of its own)."""
        producer = self.backend(queue)
        backend = producer if isinstance(producer, MemoryBackend) else self._new_backend(queue)
        builder = (WorkerPoolBuilder(f"{self.name}:{queue}")
                   .with_middleware(self.retry)
                   .add_worker(TaskRouter(self, queue))
                   .with_backend(backend))
        if concurrency_limit is not None:
            builder = builder.with_concurrency_limit(concurrency_limit)
        if shutdown_timeout is not None:
            builder = builder.with_shutdown_timeout(shutdown_timeout)
        return builder.build()

    def _pools(self, queues: Iterable[str] | None, **settings: Any) -> list[WorkerPool]:
        names = list(queues) if queues is not None else self.queues
        if not names:
            raise ConfigError(f"queues: app {self.name!r} has no tasks or workers to run")
        unknown = sorted(set(names) - set(self.queues))
        if unknown:
            raise ConfigError(f"queues: {', '.join(unknown)} not used by app {self.name!r}; "
                              f"its queues: {', '.join(self.queues)}")
        return [self.pool(q, **settings) for q in names]

    async def run_async(self, queues: Iterable[str] | None = None, *,
                        handle_signals: bool = True, concurrency_limit: int | None = None,
                        shutdown_timeout: float | None = None, scheduler: bool = True) -> None:
        """Run the pools of ``queues`` (default: every queue of the app) until
        :meth:`shutdown` or SIGTERM/SIGINT, then drain them all gracefully.
        ``scheduler``: also run the app's schedules (one leader among all
        processes enqueues each tick)."""
        pools = self._pools(queues, concurrency_limit=concurrency_limit,
                            shutdown_timeout=shutdown_timeout)
        await self._run_scheduled(pools, handle_signals=handle_signals, scheduler=scheduler)

    async def _run_scheduled(self, pools: list[WorkerPool], *, handle_signals: bool,
                             scheduler: bool) -> None:
        """Run ``pools`` and, when asked, the app's scheduler beside them."""
        runner = _schedules.start(self) if scheduler else None
        self.scheduler = runner
        try:
            await self._run_pools(pools, handle_signals=handle_signals)
        finally:
            if runner is not None:
                await runner.stop()
            self.scheduler = None

    async def _run_pools(self, pools: list[WorkerPool], *, handle_signals: bool) -> None:
        with self._lock:
            self._running = pools
        loop = asyncio.get_running_loop()
        installed: list[signal.Signals] = []
        if handle_signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self.shutdown)
                    installed.append(sig)
                except (NotImplementedError, RuntimeError):  # not on this platform
                    pass
        try:
            runs = [asyncio.ensure_future(p.run_async(handle_signals=False)) for p in pools]
            done, _ = await asyncio.wait(runs, return_when=asyncio.FIRST_EXCEPTION)
            if any(r.exception() is not None for r in done):
                self.shutdown()  # one pool failed: stop the others, then raise
            await asyncio.gather(*runs)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            with self._lock:
                self._running = []

    async def run_until_idle_async(self, queues: Iterable[str] | None = None,
                                   timeout: float = 30.0) -> bool:
        """Process what waits on ``queues`` (default: all the app's), retries
        that come due included, then return (tests, burst mode): True once
        every queue was idle within ``timeout`` seconds."""
        pools = self._pools(queues)
        done = await asyncio.gather(*(p.run_until_idle_async(timeout=timeout) for p in pools))
        return all(done)

    def run_until_idle(self, queues: Iterable[str] | None = None, timeout: float = 30.0) -> bool:
        """Blocking form of :meth:`run_until_idle_async`."""
        return asyncio.run(self.run_until_idle_async(queues, timeout))

    def run(self, queues: Iterable[str] | None = None, *, concurrency_limit: int | None = None,
            shutdown_timeout: float | None = None, scheduler: bool = True) -> None:
        """Block running the app's queues (see :meth:`run_async`)."""
        asyncio.run(self.run_async(queues, concurrency_limit=concurrency_limit,
                                   shutdown_timeout=shutdown_timeout, scheduler=scheduler))

    def shutdown(self) -> None:
        """Ask every running pool of the app to stop gracefully (thread-safe)."""
        with self._lock:
            pools = list(self._running)
        for p in pools:
            p.shutdown()

    def _run_sync(self, coro: Coroutine[Any, Any, _T]) -> _T:
        with self._lock:
            if self._loop_thread is None:
                self._loop_thread = _LoopThread(self.name)
            lt = self._loop_thread
        return lt.run(coro)

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads plain ``def`` tasks run on: the app's own, not the
        loop's default executor (a handful of threads on a small machine)."""
        ex = self._threads
        if ex is None:
            with self._lock:
                if self._threads is None:
                    self._threads = concurrent.futures.ThreadPoolExecutor(
                        SYNC_THREADS, thread_name_prefix=f"foxtive-{self.name}")
                ex = self._threads
        return ex

    def _stop_threads(self) -> None:
        with self._lock:
            ex, self._threads = self._threads, None
        if ex is not None:
            ex.shutdown(wait=False)  # running tasks finish; idle threads exit

    def _result_store(self) -> ResultStore:
        """The app's result store (made on first use); ``ConfigError`` if the
        app keeps no results or its broker has no store foxtive can use."""
        store = self._results_store
        if store is not None:
            return store
        if not self.results:
            raise ConfigError("results: this app stores no results; use App(..., results=True)")
        with self._lock:
            if self._results_store is None:
                self._results_store = self._make_store()
            return self._results_store

    def _make_store(self) -> ResultStore:
        url = self.results if isinstance(self.results, str) else self.broker
        if not isinstance(url, str):
            # A backend factory: results live where its backends do, if known.
            probe = self._new_backend_probe()
            if isinstance(probe, MemoryBackend):
                return MemoryResultStore(self.result_ttl)
            if isinstance(probe, NatsBackend):  # its credentials too
                return NatsResultStore.for_backend(probe, self.result_ttl, self.name)
            raise ConfigError("results=True: the broker factory's backend has no result store "
                              "foxtive can use; pass results='redis://...'")
        scheme = url.split(":", 1)[0].lower()
        if scheme == "memory":
            return MemoryResultStore(self.result_ttl)
        if scheme in ("redis", "rediss", "unix", "redis+unix", "redis+cluster", "rediss+cluster"):
            return RedisResultStore(url, self.result_ttl)
        if scheme in ("postgresql", "postgres"):
            return PostgresResultStore(url, self.result_ttl)
        if scheme == "sqlite":
            return SqliteResultStore(url, self.result_ttl)
        if scheme in ("nats", "tls"):
            return NatsResultStore(url, self.result_ttl, self.name)
        if isinstance(self.results, str):
            raise ConfigError(f"results: store URL scheme {scheme}:// is not supported yet; "
                              "use redis://, postgresql:// or sqlite:///...")
        raise ConfigError(f"results=True: a {scheme}:// broker has no result store of its own "
                          "here; pass results='redis://...'")

    def _new_backend_probe(self) -> Any:
        # A backend of its own, not `backend()`: the caller holds `_lock`.
        queues = self.queues or ["default"]
        return self._new_backend(queues[0])

    def close(self) -> None:
        """Close the publishing backends and stop the app's loop thread (sync
        code; from async code use ``await app.aclose()``)."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("App.close() inside a running event loop; use await app.aclose()")
        with self._lock:
            producers, self._producers = self._producers, {}
            self._publisher.forget()
            lt, self._loop_thread = self._loop_thread, None
        store, self._results_store = self._results_store, None
        self._stop_threads()
        closing = list(producers.values()) + ([store] if store is not None else [])
        if lt is not None:
            lt.run(_close_all(closing))
            lt.stop()
        elif closing:
            asyncio.run(_close_all(closing))

    async def aclose(self) -> None:
        """Close the publishing backends and stop the app's loop thread."""
        with self._lock:
            producers, self._producers = self._producers, {}
            self._publisher.forget()
            lt, self._loop_thread = self._loop_thread, None
        await _close_all(producers.values())
        self._stop_threads()
        store, self._results_store = self._results_store, None
        if store is not None:
            await store.close()
        if lt is not None:
            await asyncio.to_thread(lt.stop)




async def _close_all(backends: Iterable[Any]) -> None:
    for b in backends:
        try:
            await b.close()
        except Exception:  # closing is best effort; nothing is in flight
            pass
