"""The Python half of a running pool: where handlers are called.

Rust admits messages and hands them over in batches through lanes:

* lane 0 is watched by the event loop (``loop.add_reader`` on a socket the
  core writes one byte to, only when the loop said it would wait). Async
  handlers, and sync handlers that need a timeout or Python middleware, run
  here in long-lived consumer coroutines: no Task per message. Consumers
  are started on demand, up to the worker's concurrency, only when the
  running ones are suspended in their handlers.
* every other lane belongs to one plain ``def`` worker and is served by its
  own threads, which block in Rust without the GIL while they wait.

Outcomes go back to Rust in batches (``ack_many``); failures run the
failure policy in Rust (``_fail``), which settles exactly once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from ._core import FailureKind
from .errors import PermanentError, RetryableError
from .worker import WorkerSpec

if TYPE_CHECKING:
    from ._core import Engine, Message
    from .middleware import Middleware

log = logging.getLogger("foxtive")

#: Most messages a loop consumer acknowledges in one call.
_ACK_BATCH = 512
#: Most messages taken from the core by the loop at once.
_DRAIN_BATCH = 4096
#: Sync handlers faster than this (seconds per message) take whole batches.
_FAST_HANDLER = 0.0001
#: Sync handlers slower than this, with work waiting, get another thread.
_BLOCKING_HANDLER = 0.001
#: A slow handler gets another thread only if its wall time exceeds its
#: thread's CPU time by this factor times the threads running (GIL waits).
_OFF_CPU_FACTOR = 2
#: Threads a plain-def worker without ``concurrency`` starts with.
_INITIAL_THREADS = 2
#: How often the loop looks for handlers that are running but blocked.
_WATCH_INTERVAL = 0.05
#: A handler running at least this long counts as stuck in a wait if its
#: thread is off the CPU.
_STUCK_HANDLER = 0.01


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "<unprintable error>"
    return text[:2000]


def _timed_out(plan: Plan, what: str) -> str:
    """The text of the TimeoutError a dead letter keeps: asyncio's own has
    none, so say which worker timed out and after how long."""
    return f"{what} {plan.spec.id!r} timed out after {plan.timeout:g} s"


async def _maybe_await(value: Any) -> Any:
    """Hooks may be ``async def`` or plain ``def``."""
    if inspect.isawaitable(value):
        return await value
    return value


class Plan:
    """How one worker runs: its lane, mode, limit and the callable to invoke."""

    __slots__ = ("batch", "batching", "call", "grow", "index", "lane", "limit", "spec",
                 "threads", "timeout")

    def __init__(self, index: int, spec: WorkerSpec, lane: int, limit: int,
                 timeout: float | None, threads: int, batch: int,
                 batching: tuple[int, float] | None = None, *, grow: bool = True) -> None:
        #: No ``concurrency`` set: threads grow only while handlers wait off
        #: the CPU. Set: while handlers take long, computing or not.
        self.grow = grow
        #: (batch_size, flush_interval) for a BatchWorker under BatchMiddleware.
        self.batching = batching
        self.index = index
        self.spec = spec
        self.lane = lane
        self.limit = limit
        self.timeout = timeout
        #: Most threads: the lane's own, or the executor's for a sync
        #: handler run from the loop.
        self.threads = threads
        self.batch = batch
        self.call: Callable[[Message], Awaitable[None]] | Callable[[Message], Any] = spec.call

    @property
    def on_loop(self) -> bool:
        return self.lane == 0


def _chain(middlewares: list[Middleware], final: Callable[[Message], Awaitable[None]]
           ) -> Callable[[Message], Awaitable[None]]:
    call = final
    for mw in reversed(middlewares):
        def link(message: Message, _mw: Middleware = mw,
                 _next: Callable[[Message], Awaitable[None]] = call) -> Awaitable[None]:
            return _mw(message, _next)
        call = link
    return call


class _ThreadSlot:
    """What one handler thread holds, so a forced stop can hand it back, and
    since when, so the loop can tell a handler that waits from one that
    computes."""

    __slots__ = ("batch", "clock", "index", "sched_fd", "seen", "started")

    def __init__(self) -> None:
        self.batch: list[Message] | None = None
        self.index = 0
        #: perf_counter() when the current batch started; None when idle.
        self.started: float | None = None
        #: Ways to read, from the loop, the time this thread computed or
        #: wanted to (None where the platform has none): Linux's schedstat
        #: (CPU time + time runnable but waiting for a core, so a loaded
        #: machine does not make a computing handler look blocked), else
        #: the thread's CPU clock.
        self.sched_fd: int | None = None
        self.clock: int | None = None
        #: (started, busy time, when) at the loop's last look.
        self.seen: tuple[float | None, float | None, float] | None = None

    def bind(self) -> None:
        """Called by the thread itself: its clocks, readable from the loop."""
        with contextlib.suppress(OSError, AttributeError):
            self.sched_fd = os.open(f"/proc/self/task/{threading.get_native_id()}/schedstat",
                                    os.O_RDONLY)
        getclock = getattr(time, "pthread_getcpuclockid", None)
        if getclock is not None:
            with contextlib.suppress(OSError):
                self.clock = getclock(threading.get_ident())

    def busy(self) -> float | None:
        """Seconds this thread ran or was runnable so far, if readable."""
        fd = self.sched_fd
        if fd is not None:
            try:
                fields = os.pread(fd, 128, 0).split()
                return (int(fields[0]) + int(fields[1])) / 1e9
            except (OSError, ValueError, IndexError):  # the thread ended
                return None
        clock = self.clock
        if clock is None:
            return None
        try:
            return time.clock_gettime(clock)
        except OSError:  # the thread ended meanwhile
            return None


class _LoopWorker:
    """Consumers of one worker on the event loop."""

    def __init__(self, runner: Runner, plan: Plan) -> None:
        self.runner = runner
        self.plan = plan
        self.items: collections.deque[Message] = collections.deque()
        self.idle: list[asyncio.Future[None]] = []
        self.consumers: set[asyncio.Task[None]] = set()
        self.rebalance_pending = False
        self.call = plan.call

    def kick(self) -> None:
        """Make sure someone will take the queued messages."""
        if not self.items or self.runner.stopping:
            return
        if self.idle:
            fut = self.idle.pop()
            if not fut.done():
                fut.set_result(None)
        elif len(self.consumers) < self.plan.limit:
            task = self.runner.loop.create_task(self.consume())
            self.consumers.add(task)
            task.add_done_callback(self.consumers.discard)
        else:
            return  # every consumer is busy; they come back for more
        if not self.rebalance_pending:
            # Runs after the woken consumer yields: if it suspended in its
            # handler with messages left, wake or start one more.
            self.rebalance_pending = True
            self.runner.loop.call_soon(self.rebalance)

    def rebalance(self) -> None:
        self.rebalance_pending = False
        self.kick()

    async def consume(self) -> None:
        items = self.items
        popleft = items.popleft
        runner = self.runner
        run = self.run_one
        call = self.call
        failed = runner.failed
        # runner.ack_later, inlined: the list is flushed in place, never
        # replaced, so its append can be held here.
        acks = runner.acks
        push_ack = acks.append
        plan = self.plan
        inline = plan.timeout is None
        while True:
            if inline:
                # The common case, inlined: no coroutine per message but the
                # handler's own (this loop runs ~10^6 times a second).
                while items:
                    message = popleft()
                    try:
                        await call(message)
                    except BaseException as exc:
                        failed(plan, message, exc, on_loop=True)
                    else:
                        push_ack(message)
                        if not runner.ack_scheduled or len(acks) >= _ACK_BATCH:
                            runner.acks_added()
            else:
                while items:
                    await run(items.popleft())
            if runner.stopping:
                return
            runner.pull(exclude=self)
            if items:
                continue
            runner.flush_acks()
            fut = runner.loop.create_future()
            self.idle.append(fut)
            try:
                await fut
            finally:
                if fut in self.idle:
                    self.idle.remove(fut)

    async def run_one(self, message: Message) -> None:
        timeout = self.plan.timeout
        try:
            if timeout is None:
                await self.call(message)
            else:
                limit = asyncio.timeout(timeout)
                try:
                    async with limit:
                        await self.call(message)
                except TimeoutError:
                    if not limit.expired():
                        raise  # the handler's own TimeoutError (a socket's, say)
                    raise TimeoutError(_timed_out(self.plan, "handler")) from None
        except BaseException as exc:
            self.runner.failed(self.plan, message, exc, on_loop=True)
        else:
            self.runner.ack_later(message)


class _BatchWorker(_LoopWorker):
    """A BatchWorker under BatchMiddleware: messages gather into batches."""

    def __init__(self, runner: Runner, plan: Plan, size: int, interval: float) -> None:
        super().__init__(runner, plan)
        self.size = size
        self.interval = interval
        self.pending: list[Message] = []
        self.timer: asyncio.TimerHandle | None = None
        self.process_batch = plan.spec.obj.process_batch

    def kick(self) -> None:
        items, pending = self.items, self.pending
        while items:
            pending.append(items.popleft())
            if len(pending) >= self.size:
                self.flush()
                pending = self.pending
        if self.pending and self.timer is None and not self.runner.stopping:
            self.timer = self.runner.loop.call_later(self.interval, self.flush)

    def flush(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending:
            return
        batch, self.pending = self.pending, []
        task = self.runner.loop.create_task(self.run_batch(batch))
        self.consumers.add(task)
        task.add_done_callback(self.consumers.discard)

    async def run_batch(self, batch: list[Message]) -> None:
        runner, timeout = self.runner, self.plan.timeout
        try:
            if timeout is None:
                await self.process_batch(batch)
            else:
                limit = asyncio.timeout(timeout)
                try:
                    async with limit:
                        await self.process_batch(batch)
                except TimeoutError:
                    if not limit.expired():
                        raise
                    text = f"{_timed_out(self.plan, 'batch handler')} ({len(batch)} messages)"
                    raise TimeoutError(text) from None
        except BaseException as exc:
            task = asyncio.current_task()
            if (isinstance(exc, asyncio.CancelledError) and runner.stopping
                    and task is not None and task.cancelling()):
                for m in batch:
                    m._requeue()
                raise
            for m in batch:
                if not m.settled:
                    runner.failed(self.plan, m, exc, on_loop=True)
        else:
            for m in batch:
                runner.ack_later(m)


#: ``callback(worker_id, message, error)`` for every handler failure.
FailureListener = Callable[[str, "Message", BaseException], Any]


class Runner:
    """One run of a pool over one engine: it runs until stopped
    (:meth:`run`), until idle (:meth:`run_until_idle`), or one message the
    caller hands in (:meth:`dispatch`). The pool configures and starts it."""

    def __init__(self, engine: Engine, plans: list[Plan], middlewares: list[Middleware],
                 shutdown_timeout: float, handle_signals: bool,
                 failure_listeners: list[FailureListener] | None = None) -> None:
        self.engine = engine
        self.plans = plans
        self.middlewares = middlewares
        self.shutdown_timeout = shutdown_timeout
        self.handle_signals = handle_signals
        self.loop = asyncio.get_running_loop()
        self.stopping = False
        self.stop_event = asyncio.Event()
        self.force_event = asyncio.Event()
        self.acks: list[Message] = []
        self.ack_scheduled = False
        self.executors: list[ThreadPoolExecutor] = []
        self.loop_workers: list[_LoopWorker | None] = []
        self.only_loop_worker: _LoopWorker | None = None
        self.threads: list[threading.Thread] = []
        self.slots: list[_ThreadSlot] = []
        self.signals: list[int] = []
        self.grow_lock = threading.Lock()
        self.thread_counts: dict[int, int] = {}
        #: Slots of each thread worker's threads, by plan index.
        self.plan_slots: dict[int, list[_ThreadSlot]] = {}
        self.watch_handle: asyncio.TimerHandle | None = None
        self.last_watch = (0.0, 0.0)
        self._idle_reached = False
        #: Set once the backend connected: idleness is only judged after it.
        self.started = False
        #: Called for every handler failure (``WorkerPool.on_failure``): the
        #: pool's own list, so listeners added while running are called too.
        self.failure_listeners = failure_listeners if failure_listeners is not None else []
        self._prepare()

    # ---------------------------------------------------------------- set-up
    def _prepare(self) -> None:
        for plan in self.plans:
            if plan.on_loop:
                final = plan.spec.call
                if not plan.spec.is_async:
                    # One executor per worker, as large as its concurrency:
                    # a worker whose handlers block cannot take another's
                    # threads.
                    executor = ThreadPoolExecutor(
                        max_workers=max(1, plan.threads),
                        thread_name_prefix=f"foxtive-handler-{plan.spec.id}",
                    )
                    self.executors.append(executor)
                    final = self._in_executor(plan.spec.call, executor)
                plan.call = _chain(self.middlewares, final) if self.middlewares else final
                if plan.batching is not None:
                    size, interval = plan.batching
                    self.loop_workers.append(_BatchWorker(self, plan, size, interval))
                else:
                    self.loop_workers.append(_LoopWorker(self, plan))
            else:
                self.loop_workers.append(None)
        on_loop = [w for w in self.loop_workers if w is not None]
        if len(on_loop) == 1 and len(self.plans) == 1:
            self.only_loop_worker = on_loop[0]

    def _in_executor(self, fn: Callable[[Message], Any], executor: ThreadPoolExecutor
                     ) -> Callable[[Message], Awaitable[Any]]:
        loop = self.loop

        def call(message: Message) -> Awaitable[Any]:
            return loop.run_in_executor(executor, fn, message)

        return call

    async def run(self) -> None:
        for plan in self.plans:
            if plan.spec.setup is not None:
                await _maybe_await(plan.spec.setup())
        self._install_signals()
        if not await self._start_engine():
            return

        fd = self.engine.wake_fd(0)
        if fd is not None:
            self.loop.add_reader(fd, self._on_wake)
        for plan in self.plans:
            if not plan.on_loop:
                for _ in range(min(_INITIAL_THREADS, plan.threads)):
                    self._grow(plan)
        if any(not p.on_loop for p in self.plans):
            self.last_watch = (time.perf_counter(), time.process_time())
            self.watch_handle = self.loop.call_later(_WATCH_INTERVAL, self._watch_threads)
        try:
            self.pull()
            await self.stop_event.wait()
        finally:
            if fd is not None:
                self.loop.remove_reader(fd)
            await self._drain()
            self._remove_signals()

    async def run_until_idle(self, timeout: float | None) -> bool:
        """Run until nothing is left to do (retries that come due included),
        then drain and stop. True once idle; False if ``timeout`` seconds
        passed first or the pool was stopped, including when the backend
        never connected (a broker that does not answer is not idle)."""
        watcher = asyncio.ensure_future(self._watch_idle(timeout))
        try:
            await self.run()
        finally:
            watcher.cancel()
        return self._idle_reached

    async def _watch_idle(self, timeout: float | None) -> None:
        loop, engine = self.loop, self.engine
        deadline = None if timeout is None else loop.time() + timeout
        quiet_since: float | None = None
        last_received = -1
        while not self.stop_event.is_set():
            await asyncio.sleep(0.005)
            if not self.started:
                # Not connected yet: nothing can be said about the queue.
                if deadline is not None and loop.time() >= deadline:
                    log.warning("run_until_idle: the backend did not connect within %.1f s; "
                                "stopping", timeout)
                    self.request_stop()
                    return
                continue
            self.flush_acks()
            idle = engine.is_idle()
            if idle is None:
                # The backend cannot tell: idle once nothing is in flight and
                # nothing arrived for half a second.
                received = engine.stats()["received"]
                if engine.in_flight() == 0 and received == last_received:
                    quiet_since = quiet_since or loop.time()
                    idle = loop.time() - quiet_since >= 0.5
                else:
                    quiet_since, last_received, idle = None, received, False
            else:
                # Busy, or a delayed retry has yet to come due: the half
                # second of quiet counts from when it stops being so.
                quiet_since = None
            if idle:
                self._idle_reached = True
                self.request_stop()
                return
            if deadline is not None and loop.time() >= deadline:
                log.warning("run_until_idle: not idle after %.1f s; stopping", timeout)
                self.request_stop()
                return

    async def dispatch(self, message: Message) -> str:
        """Run one message the engine adopted through its worker (and the
        Python middleware) here and now; the engine settles it. Returns how:
        "success", "retried", "dead_lettered" or "requeued"."""
        plan = self.plans[message._worker]
        worker = self.loop_workers[plan.index]
        if worker is None:
            try:
                await asyncio.to_thread(plan.spec.call, message)
            except BaseException as exc:
                self.failed(plan, message, exc, on_loop=False)
            else:
                self.engine.ack_many([message])
        else:
            await worker.run_one(message)
            self.flush_acks()
        # Both paths settle it (the handler may have first): the engine says how.
        return message._outcome or "success"

    async def _start_engine(self) -> bool:
        """Connect; a stop requested meanwhile (a broker that is not there yet
        behind a ResilientBackend) closes the backend, which ends the wait."""
        starting = asyncio.ensure_future(self.engine.start())
        stopping = asyncio.ensure_future(self.stop_event.wait())
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if starting.done():
            starting.result()  # raises if the first connection failed for good
            self.started = True
            return True
        log.info("stop requested while connecting; closing the backend")
        await self.engine.finish()
        # Closing interrupts the connection attempt; a second signal (or a
        # backend that does not listen) does not hold the exit beyond
        # shutdown_timeout.
        forcing = asyncio.ensure_future(self.force_event.wait())
        try:
            await asyncio.wait({starting, forcing}, timeout=self.shutdown_timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            forcing.cancel()
        if starting.done():
            with contextlib.suppress(BaseException):
                starting.result()
        else:
            log.warning("the backend did not stop connecting within %.1f s; leaving it",
                        self.shutdown_timeout)
        await self._teardown()
        self._remove_signals()
        return False

    async def _teardown(self) -> None:
        for plan in self.plans:
            if plan.spec.teardown is not None:
                try:
                    await _maybe_await(plan.spec.teardown())
                except Exception:
                    log.exception("teardown of worker %s failed", plan.spec.id)

    # ------------------------------------------------------------ signals
    def _install_signals(self) -> None:
        if not self.handle_signals or threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self.loop.add_signal_handler(sig, self._on_signal, sig)
                self.signals.append(sig)
            except (NotImplementedError, RuntimeError, ValueError):
                pass

    def _remove_signals(self) -> None:
        for sig in self.signals:
            with contextlib.suppress(Exception):
                self.loop.remove_signal_handler(sig)
        self.signals.clear()

    def _on_signal(self, sig: int) -> None:
        if self.stop_event.is_set():
            log.warning("second %s: stopping now; unfinished messages go back to the broker",
                        signal.Signals(sig).name)
            self.force_event.set()
        else:
            log.info("%s received: draining (up to %.1f s)", signal.Signals(sig).name,
                     self.shutdown_timeout)
            self.stop_event.set()

    def request_stop(self, force: bool = False) -> None:
        self.stop_event.set()
        if force:
            self.force_event.set()

    # ---------------------------------------------------------- hand-off
    def _on_wake(self) -> None:
        self.engine.clear_wake(0)
        self.pull()

    def pull(self, exclude: _LoopWorker | None = None) -> None:
        """Take what the core has ready for the loop and wake consumers."""
        drain = self.engine.drain
        only = self.only_loop_worker
        workers = self.loop_workers
        while True:
            batch = drain(0, _DRAIN_BATCH)
            if not batch:
                break
            if only is not None:
                only.items.extend(batch)
            else:
                for m in batch:
                    w = workers[m._worker]
                    if w is not None:
                        w.items.append(m)
        for w in workers:
            if w is not None and w is not exclude and w.items:
                w.kick()

    def ack_later(self, message: Message) -> None:
        self.acks.append(message)
        self.acks_added()

    def acks_added(self) -> None:
        """Messages were added to ``acks``: flush a full batch now, else
        make sure a flush runs on the loop's next turn."""
        if len(self.acks) >= _ACK_BATCH:
            self.flush_acks()
        elif not self.ack_scheduled:
            self.ack_scheduled = True
            self.loop.call_soon(self.flush_acks)

    def flush_acks(self) -> None:
        # A flush may run while one is scheduled: the scheduled one then
        # finds the list empty. The list is emptied in place (consumers hold
        # its append).
        self.ack_scheduled = False
        acks = self.acks
        if acks:
            try:
                self.engine.ack_many(acks)
            finally:
                acks.clear()

    # ----------------------------------------------------------- failures
    def failed(self, plan: Plan, message: Message, exc: BaseException, *, on_loop: bool) -> None:
        if on_loop and isinstance(exc, asyncio.CancelledError):
            task = asyncio.current_task()
            if self.stopping and task is not None and task.cancelling():
                # Cancelled by shutdown: hand it back untried, never acked.
                message._requeue()
                raise exc
        for listener in self.failure_listeners:
            try:
                listener(plan.spec.id, message, exc)
            except Exception:
                log.exception("failure listener %r raised", listener)
        if message.settled:
            log.warning("worker %s raised %s after settling message %s; the settlement stands",
                        plan.spec.id, type(exc).__name__, message.id)
            return
        kind, delay = FailureKind.TRANSIENT, None
        if isinstance(exc, PermanentError):
            kind = FailureKind.PERMANENT
        elif isinstance(exc, RetryableError) and exc.delay is not None:
            kind, delay = FailureKind.RETRY_AFTER, exc.delay
        if kind != FailureKind.PERMANENT and plan.spec.has_should_retry:
            try:
                if not plan.spec.should_retry(message, exc, message._retry_info()):
                    kind = FailureKind.PERMANENT
            except Exception:
                log.exception("should_retry of worker %s raised; retrying as usual", plan.spec.id)
        error_type = type(exc).__name__
        outcome = message._fail(error_type, _describe(exc), kind, delay)
        if outcome is not None:
            log.log(logging.WARNING if outcome == "dead_lettered" else logging.INFO,
                    "message %s failed in worker %s (attempt %d): %s: %s -> %s",
                    message.id, plan.spec.id, message.attempt, error_type,
                    _describe(exc)[:200], outcome)

    # ------------------------------------------------------------ threads
    def _start_thread(self, plan: Plan) -> None:
        slot = _ThreadSlot()
        n = sum(1 for t in self.threads if t.name.startswith(f"foxtive-{plan.spec.id}-"))
        t = threading.Thread(target=self._thread_main, args=(plan, slot),
                             name=f"foxtive-{plan.spec.id}-{n}", daemon=True)
        self.slots.append(slot)
        self.plan_slots.setdefault(plan.index, []).append(slot)
        self.threads.append(t)
        t.start()

    def _grow(self, plan: Plan) -> None:
        """Add a thread to a worker whose handlers block while work waits."""
        with self.grow_lock:
            running = self.thread_counts.get(plan.index, 0)
            if running < plan.threads and not self.stopping:
                self.thread_counts[plan.index] = running + 1
                self._start_thread(plan)

    def _watch_threads(self) -> None:
        """Grow thread workers whose threads are all inside long handlers
        while messages wait. Growth when a handler finishes cannot see a
        handler that never does; this looks at the ones still running."""
        self.watch_handle = None
        if self.stopping:
            return
        now, cpu_now = time.perf_counter(), time.process_time()
        then, cpu_then = self.last_watch
        self.last_watch = (now, cpu_now)
        # Where a thread's own CPU clock cannot be read: the process's share
        # of one core since the last look.
        process_share = (cpu_now - cpu_then) / max(now - then, 1e-6)
        growing = False
        for plan in self.plans:
            if not plan.on_loop:
                if self.thread_counts.get(plan.index, 0) < plan.threads:
                    growing = True
                    self._grow_if_stuck(plan, now, process_share)
        if growing:
            self.watch_handle = self.loop.call_later(_WATCH_INTERVAL, self._watch_threads)

    def _grow_if_stuck(self, plan: Plan, now: float, process_share: float) -> None:
        slots = self.plan_slots.get(plan.index, [])
        n = len(slots)
        if not plan.grow:
            # `concurrency` set: the user asked for that many handlers at
            # once. Fast handlers run on few threads (GIL hand-offs are
            # their main cost); as soon as every thread has been in one
            # batch for _STUCK_HANDLER with work waiting, start as many
            # threads as messages wait, up to the limit.
            if n and all(s.started is not None and now - s.started >= _STUCK_HANDLER
                         for s in slots):
                for _ in range(min(self.engine.lane_len(plan.lane), plan.threads - n)):
                    self._grow(plan)
            return
        stuck = 0
        for slot in slots:
            started, busy, seen = slot.started, slot.busy(), slot.seen
            slot.seen = (started, busy, now)
            if started is None or seen is None or seen[0] != started:
                continue  # free, or a new batch since the last look
            if now - started < _STUCK_HANDLER:
                continue
            if busy is None or seen[1] is None:
                if process_share < 0.5:
                    stuck += 1
            elif (busy - seen[1]) * _OFF_CPU_FACTOR * n < now - seen[2]:
                # Ran (or was runnable) less than 1/(2n) of the time since
                # the last look: waiting on I/O, a lock or a sleep, not
                # computing nor taking its turn at the GIL.
                stuck += 1
        waiting = self.engine.lane_len(plan.lane) if n and stuck == n else 0
        # Every thread waits off the CPU with work waiting: double, within
        # the limit and the messages waiting.
        for _ in range(min(waiting, n, plan.threads - n)):
            self._grow(plan)

    def _thread_main(self, plan: Plan, slot: _ThreadSlot) -> None:
        # Threads start few (two cores make GIL hand-offs the main cost of
        # fast handlers) and grow, up to the worker's limit, while handlers
        # take long and messages wait: with `concurrency` set whatever the
        # handler does, without it only while it waits off the CPU (here on
        # finishing, in _watch_threads while still running). Fast handlers
        # take big batches; slow ones take one message at a time so that
        # waiting work spreads out.
        slot.bind()
        engine = self.engine
        fn = plan.spec.call
        lane = plan.lane
        max_batch = 1  # until the handler's speed is known
        clock = time.perf_counter
        # The thread's CPU time, plus (Linux) the time it was runnable but
        # waiting for a core: on a loaded machine a computing handler's wall
        # time stretches, and that must not read as waiting on I/O.
        cpu_clock: Callable[[], float] = time.thread_time
        if slot.sched_fd is not None and slot.busy() is not None:
            def cpu_clock() -> float:
                return slot.busy() or 0.0
        while True:
            want = max_batch
            if want > 1:
                # Never hoard: a batch takes at most this thread's share of
                # what waits, so that a handler that turns out to block holds
                # back no message another thread of the worker could run.
                share = engine.lane_len(lane) // self.thread_counts.get(plan.index, 1)
                want = max(1, min(want, share))
            batch = engine.take(lane, want, 0.25)
            if batch is None:
                return
            if not batch:
                continue
            slot.batch = batch
            started = clock()
            cpu_started = cpu_clock()
            slot.started = started
            for i, m in enumerate(batch):
                slot.index = i
                if self.stopping:
                    for rest in batch[i:]:
                        rest._requeue()
                    break
                try:
                    fn(m)
                except BaseException as exc:
                    try:
                        self.failed(plan, m, exc, on_loop=False)
                    except BaseException:
                        log.exception("failure handling of message %s failed", m.id)
            slot.started = None
            slot.batch = None
            engine.ack_many(batch)
            elapsed = clock() - started
            per_message = elapsed / len(batch)
            max_batch = min(plan.batch, max_batch * 4) if per_message < _FAST_HANDLER else 1
            if per_message > _BLOCKING_HANDLER and engine.lane_len(lane) > 0:
                # Another thread helps a handler that waits off the CPU (I/O,
                # sleep), not one that computes: those share one GIL, so with
                # n threads each runs about 1/n of the time, and every extra
                # thread only adds GIL hand-offs (W5: 32 threads of a 1 ms
                # CPU-bound handler spent half the CPU in the kernel).
                threads = self.thread_counts.get(plan.index, 1)
                if not plan.grow or (
                        elapsed > _OFF_CPU_FACTOR * threads * (cpu_clock() - cpu_started)):
                    # `concurrency` set: slow handlers get their threads
                    # whether they compute or not.
                    self._grow(plan)

    # ----------------------------------------------------------- shutdown
    async def _drain(self) -> None:
        self.stopping = True
        if self.watch_handle is not None:
            self.watch_handle.cancel()
            self.watch_handle = None
        await self.engine.begin_drain()
        # Taken from the core but not started: back to the broker, untried.
        for w in self.loop_workers:
            if isinstance(w, _BatchWorker):
                w.kick()
                w.flush()  # a partial batch is processed, not handed back
            if w is not None:
                while w.items:
                    w.items.popleft()._requeue()
                for fut in w.idle:
                    if not fut.done():
                        fut.set_result(None)
        self.flush_acks()
        deadline = self.loop.time() + self.shutdown_timeout
        while self.engine.in_flight() > 0 and not self.force_event.is_set():
            remaining = deadline - self.loop.time()
            if remaining <= 0:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.force_event.wait(), min(0.02, remaining))
            self.flush_acks()
        if self.engine.in_flight() > 0:
            log.warning("shutdown: %d message(s) unfinished; handing them back to the broker",
                        self.engine.in_flight())
            consumers = [t for w in self.loop_workers if w is not None for t in w.consumers]
            for t in consumers:
                t.cancel()
            for slot in self.slots:
                batch, index = slot.batch, slot.index
                if batch is not None:
                    done = batch[:index]
                    for m in batch[index:]:
                        m._requeue()
                    if done:
                        self.engine.ack_many(done)
            if consumers:
                await asyncio.gather(*consumers, return_exceptions=True)
        self.flush_acks()
        await self._teardown()
        await self.engine.finish()
        for executor in self.executors:
            executor.shutdown(wait=False, cancel_futures=True)
        # Only the loop's watcher read these, and it has stopped.
        for slot in self.slots:
            if slot.sched_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(slot.sched_fd)
                slot.sched_fd = None
