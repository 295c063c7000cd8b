"""Pools: workers, their limits and middleware, run over a backend."""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
from collections.abc import Iterable
from typing import Any

from . import _core, _logs
from ._config import seconds
from ._dispatch import FailureListener, Plan, Runner
from ._native import native_of
from .backends import Backend, MemoryBackend
from .errors import ConfigError
from .middleware import Middleware
from .policies import (
    BatchMiddleware,
    CircuitBreakerMiddleware,
    EnginePolicy,
    EngineSettings,
    RateLimitMiddleware,
    RetryHandler,
)
from .worker import BatchWorker, Worker, WorkerSpec

__all__ = ["LoadBalancingStrategy", "WorkerPool", "WorkerPoolBuilder"]

log = logging.getLogger("foxtive")

#: Pool-wide limit on messages in flight when none is set.
DEFAULT_CONCURRENCY_LIMIT = 1000
#: Threads a plain ``def`` worker gets when it sets no ``concurrency``.
DEFAULT_SYNC_THREADS = 32
#: Never more threads than this for one worker.
MAX_SYNC_THREADS = 256
#: Threads a plain ``def`` worker run on the event loop (it has a timeout or
#: the pool has Python middleware) may use when it sets no ``concurrency``.
DEFAULT_LOOP_SYNC_THREADS = 64


class LoadBalancingStrategy(enum.StrEnum):
    """How the pool picks a worker for the next message."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    LEAST_LOADED = "least_loaded"

    @classmethod
    def parse(cls, value: Any) -> LoadBalancingStrategy:
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            key = value.strip().upper().replace("-", "_")
            if key in cls.__members__:
                return cls[key]
            for member in cls:
                if member.value == value.strip().lower():
                    return member
        allowed = ", ".join(m.name for m in cls)
        raise ConfigError(f"strategy: unknown value {value!r}; allowed: {allowed}")


class WorkerPoolBuilder:
    """Build a :class:`WorkerPool`. Each ``with_*`` / ``add_*`` returns the builder."""

    def __init__(self, name: str = "foxtive-pool") -> None:
        if not isinstance(name, str) or not name:
            raise ConfigError("name: must be a non-empty string")
        self._name = name
        self._strategy: Any = LoadBalancingStrategy.ROUND_ROBIN
        self._limit: Any = DEFAULT_CONCURRENCY_LIMIT
        self._middleware: list[Any] = []
        self._workers: list[tuple[Any, str | None]] = []
        self._shutdown_timeout: Any = 30.0
        self._backend: Any = None

    def with_strategy(self, strategy: LoadBalancingStrategy | str) -> WorkerPoolBuilder:
        self._strategy = strategy
        return self

    def with_concurrency_limit(self, limit: int) -> WorkerPoolBuilder:
        self._limit = limit
        return self

    def with_middleware(self, middleware: Any) -> WorkerPoolBuilder:
        self._middleware.append(middleware)
        return self

    def add_worker(self, worker: Any, id: str | None = None) -> WorkerPoolBuilder:
        self._workers.append((worker, id))
        return self

    def add_workers(self, workers: Iterable[Any]) -> WorkerPoolBuilder:
        for w in workers:
            self._workers.append((w, None))
        return self

    def with_shutdown_timeout(self, timeout: float) -> WorkerPoolBuilder:
        self._shutdown_timeout = timeout
        return self

    def with_backend(self, backend: Any) -> WorkerPoolBuilder:
        self._backend = backend
        return self

    def build(self) -> WorkerPool:
        """Validate everything and return the pool; ``ConfigError`` names what is wrong.

        The engine's settings (limits, workers, policies) are checked once,
        by the core, when the pool builds its ``_core.EngineConfig``."""
        strategy = LoadBalancingStrategy.parse(self._strategy)
        shutdown_timeout = seconds("shutdown_timeout", self._shutdown_timeout)
        specs = [WorkerSpec(obj, wid) for obj, wid in self._workers]
        # Plain callables added more than once get numbered ids: fn, fn-2,
        # fn-3... (ids given twice on purpose are the core's to refuse).
        taken = {spec.id for spec, (obj, wid) in zip(specs, self._workers, strict=True)
                 if wid is not None or isinstance(obj, Worker)}
        for spec, (obj, wid) in zip(specs, self._workers, strict=True):
            if wid is None and not isinstance(obj, Worker):
                base, n = spec.id, 1
                while spec.id in taken:
                    n += 1
                    spec.id = f"{base}-{n}"
                taken.add(spec.id)
        settings = EngineSettings()
        python_mw: list[Middleware] = []
        for mw in self._middleware:
            if isinstance(mw, EnginePolicy):
                mw._add_to(settings)
            elif isinstance(mw, Middleware):
                python_mw.append(mw)
            else:
                raise ConfigError(
                    f"middleware: expected a foxtive middleware, got {type(mw).__name__}"
                )
        if self._backend is not None:
            _check_backend(self._backend)
        return WorkerPool(
            name=self._name,
            specs=specs,
            strategy=strategy,
            concurrency_limit=self._limit,
            settings=settings,
            middlewares=python_mw,
            shutdown_timeout=shutdown_timeout,
            backend=self._backend,
        )


def _check_backend(backend: Any) -> None:
    if not isinstance(backend, Backend) and native_of(backend) is None:
        raise ConfigError(_core.not_a_backend(type(backend).__name__))




async def _housekeeping(backend: Any, runner: Runner, metrics: _core.Metrics) -> None:
    """While the pool runs: emit core log events through ``logging`` and fire
    a backend's state-change callbacks, on the loop, a few times a second."""
    poll_state = getattr(backend, "_poll_state", None)
    while not runner.stop_event.is_set():
        metrics.heartbeat()
        _logs.pump()
        if poll_state is not None:
            poll_state()
        await asyncio.sleep(0.05)


class WorkerPool:
    """A set of workers run over one backend. Build it with :class:`WorkerPoolBuilder`."""

    def __init__(self, *, name: str, specs: list[WorkerSpec], strategy: LoadBalancingStrategy,
                 concurrency_limit: Any, settings: EngineSettings,
                 middlewares: list[Middleware], shutdown_timeout: float, backend: Any) -> None:
        self.name = name
        self.strategy = strategy
        self.shutdown_timeout = shutdown_timeout
        self.settings = settings
        self.middlewares = middlewares
        self.backend = backend
        self._specs = specs
        # Checked here, once, by the core; every run's engine is built from it.
        worker_lanes, lanes = self._worker_lanes()
        self._config = settings.engine_config(
            pool=name, concurrency_limit=concurrency_limit, strategy=strategy.value,
            workers=[_core.WorkerConfig(id=s.id, lane=lane, concurrency=s.concurrency)
                     for s, lane in zip(specs, worker_lanes, strict=True)],
            lanes=lanes,
        )
        self.concurrency_limit: int = self._config.concurrency_limit
        self._lock = threading.Lock()
        self._engine: _core.Engine | None = None
        self._runner: Runner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Counters and histograms live in Rust and outlive each run.
        self._metrics = _core.Metrics(name, [s.id for s in specs])
        self._stop_requested = False
        self._ran = False
        self._breaker_state = "closed"
        self._breaker_transitions = 0
        # Rate-limit waits (count, seconds) of the runs that ended.
        self._rate_limit_waits = (0, 0.0)
        #: Called as ``callback(worker_id, message, error)`` when a handler raises.
        self.failure_listeners: list[FailureListener] = []

    def on_failure(self, callback: FailureListener) -> FailureListener:
        """Call ``callback(worker_id, message, error)`` whenever a handler raises
        (before the failure policy settles the message); usable as a decorator.

        For error reporting (Sentry...) and tests (``foxtive.testing``). It runs
        where the handler ran: on the pool's event loop, or on a handler
        thread for plain ``def`` workers, so keep it short and thread-safe.
        Exceptions it raises are logged and ignored. Remove it with
        ``pool.failure_listeners.remove(callback)``."""
        self.failure_listeners.append(callback)
        return callback

    @property
    def retry(self) -> RetryHandler:
        return self.settings.retry

    @property
    def timeout(self) -> float | None:
        """The pool's timeout for one message (``TimeoutMiddleware``), if any."""
        return None if self.settings.timeout is None else self.settings.timeout.seconds

    @property
    def breaker(self) -> CircuitBreakerMiddleware | None:
        return self.settings.breaker

    @property
    def rate_limit(self) -> RateLimitMiddleware | None:
        return self.settings.rate_limit

    @property
    def batching(self) -> BatchMiddleware | None:
        return self.settings.batching

    @property
    def worker_ids(self) -> list[str]:
        return [s.id for s in self._specs]

    def __repr__(self) -> str:
        return f"WorkerPool(name={self.name!r}, workers={self.worker_ids!r})"

    # ------------------------------------------------------------- plans
    def _timeout_of(self, spec: WorkerSpec) -> float | None:
        return spec.timeout if spec.timeout is not None else self.timeout

    def _batching_of(self, spec: WorkerSpec) -> tuple[int, float] | None:
        """(batch_size, flush_interval) for a BatchWorker under BatchMiddleware."""
        if self.batching is None or not isinstance(spec.obj, BatchWorker):
            return None
        return (self.batching.config.batch_size, self.batching.config.flush_interval)

    def _worker_lanes(self) -> tuple[list[int], list[bool]]:
        """Each worker's lane, and the lanes (True: the event loop's, lane 0;
        False: a thread lane of one plain ``def`` worker)."""
        lanes = [True]
        of: list[int] = []
        for spec in self._specs:
            if (spec.is_async or self._timeout_of(spec) is not None or bool(self.middlewares)
                    or self._batching_of(spec) is not None):
                of.append(0)
            else:
                lanes.append(False)
                of.append(len(lanes) - 1)
        return of, lanes

    def _plans(self) -> list[Plan]:
        plans: list[Plan] = []
        limits = self._config.worker_limits
        for i, (spec, lane) in enumerate(zip(self._specs, self._worker_lanes()[0], strict=True)):
            limit = limits[i]
            # A `def` worker that sets `concurrency` gets that many threads
            # (up to MAX_SYNC_THREADS) as soon as its handlers block with
            # messages waiting, whether they use the CPU or not. Without it,
            # threads grow only while handlers wait off the CPU (_dispatch).
            fixed = spec.concurrency is not None
            if lane == 0:
                executor = (min(limit, MAX_SYNC_THREADS) if fixed
                            else min(limit, DEFAULT_LOOP_SYNC_THREADS))
                plans.append(Plan(i, spec, 0, limit, self._timeout_of(spec), executor, 0,
                                  self._batching_of(spec), grow=not fixed))
            else:
                threads = min(limit, MAX_SYNC_THREADS if fixed else DEFAULT_SYNC_THREADS)
                batch = max(1, min(256, limit // 2))
                plans.append(Plan(i, spec, lane, limit, None, threads, batch, grow=not fixed))
        return plans

    def _new_engine(self, backend: Any) -> _core.Engine:
        return _core.Engine(self._config, backend, metrics=self._metrics)

    def _resolve_backend(self, backend: Any) -> Any:
        chosen = backend if backend is not None else self.backend
        if chosen is None:
            raise ConfigError(
                "backend: none given; pass one to run() or build the pool with_backend(...)"
            )
        _check_backend(chosen)
        return chosen

    # -------------------------------------------------------------- running
    async def run_async(self, backend: Any = None, *, handle_signals: bool = True) -> None:
        """Run until :meth:`shutdown` or SIGTERM/SIGINT, then drain gracefully."""
        await self._run(backend, until_idle=False, timeout=None, handle_signals=handle_signals)

    def run(self, backend: Any = None) -> None:
        """Block running the pool; SIGTERM/SIGINT drain it gracefully."""
        asyncio.run(self.run_async(backend))

    async def run_until_idle_async(self, backend: Any = None, timeout: float = 30.0) -> bool:
        """Process what is there (including retries that come due), then stop.

        Returns True once idle, False if ``timeout`` seconds passed first
        (the pool then drains and stops all the same), including when the
        backend never connected: a broker that does not answer is not idle.
        A connection that fails outright raises ``BackendError``."""
        return await self._run(backend, until_idle=True, timeout=seconds("timeout", timeout),
                               handle_signals=False)

    def run_until_idle(self, backend: Any = None, timeout: float = 30.0) -> bool:
        """Blocking form of :meth:`run_until_idle_async`."""
        return asyncio.run(self.run_until_idle_async(backend, timeout))

    async def _run(self, backend: Any, *, until_idle: bool, timeout: float | None,
                   handle_signals: bool) -> bool:
        chosen = self._resolve_backend(backend)
        plans = self._plans()
        with self._lock:
            if self._runner is not None:
                raise ConfigError("pool: already running")
            engine = self._new_engine(chosen)
            if self.retry.dead_letter_queue is not None:
                # replay()'s default target: where these dead letters came from.
                self.retry.dead_letter_queue._remember(chosen)
            runner = Runner(engine, plans, self.middlewares, self.shutdown_timeout,
                            handle_signals, self.failure_listeners)
            self._engine, self._runner = engine, runner
            self._loop = asyncio.get_running_loop()
            self._ran = True
            if self._stop_requested:
                runner.request_stop()
                self._stop_requested = False
        idle = False
        state_poller = asyncio.ensure_future(_housekeeping(chosen, runner, self._metrics))
        try:
            if until_idle:
                idle = await runner.run_until_idle(timeout)
            else:
                await runner.run()
        finally:
            state_poller.cancel()
            if hasattr(chosen, "_poll_state"):
                chosen._poll_state()
            _logs.pump()
            with self._lock:
                stats = engine.stats()
                if "circuit_breaker" in stats:
                    self._breaker_state = stats["circuit_breaker"]
                    self._breaker_transitions += stats["circuit_breaker_transitions"]
                if "rate_limit_waits" in stats:
                    n, secs = self._rate_limit_waits
                    self._rate_limit_waits = (n + stats["rate_limit_waits"],
                                              secs + stats["rate_limit_wait_seconds"])
                self._runner = None
                self._engine = None
                self._loop = None
        return idle

    def shutdown(self, force: bool = False) -> None:
        """Ask the pool to stop gracefully (thread-safe, idempotent).

        ``force=True`` stops at once: unfinished messages go back unacked."""
        with self._lock:
            runner, loop = self._runner, self._loop
            if runner is None:
                self._stop_requested = True
                return
        if loop is not None and loop.is_running():
            try:
                loop.call_soon_threadsafe(runner.request_stop, force)
            except RuntimeError:
                pass

    async def dispatch(self, message: Any, *, headers: dict[str, Any] | None = None,
                       message_id: str | None = None) -> str:
        """Run one message through the middleware and a worker yourself.

        ``message`` is a ``foxtive.Message`` or a body (bytes/str). Returns
        the outcome: "success", "retried", "dead_lettered" or "requeued".
        No broker is involved: settlements are recorded, not sent."""
        plans = self._plans()
        engine = self._engine
        if engine is None:
            engine = self._new_engine(MemoryBackend(f"{self.name}-dispatch"))
        if isinstance(message, _core.Message):
            adopted = engine.adopt(message.body, dict(message.headers), message.id,
                                   message.queue, message.attempt)
        else:
            adopted = engine.adopt(message, headers, message_id)
        runner = Runner(engine, plans, self.middlewares, self.shutdown_timeout, False,
                        self.failure_listeners)
        return await runner.dispatch(adopted)

    # ------------------------------------------------------------ looking in
    def stats(self) -> dict[str, Any]:
        """Counters since the pool was built, plus what is in flight now."""
        with self._lock:
            engine = self._engine
        out: dict[str, Any] = dict(self._metrics.stats())
        if engine is not None:
            live = engine.stats()
            out["in_flight"] = live["in_flight"]
            out["workers"] = live["workers"]
            if "circuit_breaker" in live:
                out["circuit_breaker"] = live["circuit_breaker"]
                out["circuit_breaker_transitions"] = (
                    self._breaker_transitions + live["circuit_breaker_transitions"]
                )
            if "rate_limit_waits" in live:
                out["rate_limit_waits"] = self._rate_limit_waits[0] + live["rate_limit_waits"]
                out["rate_limit_wait_seconds"] = (self._rate_limit_waits[1]
                                                  + live["rate_limit_wait_seconds"])
        else:
            out["in_flight"] = 0
            out["workers"] = dict.fromkeys(self.worker_ids, 0)
            if self.breaker is not None:
                out["circuit_breaker"] = self._breaker_state
                out["circuit_breaker_transitions"] = self._breaker_transitions
            if self.rate_limit is not None:
                out["rate_limit_waits"], out["rate_limit_wait_seconds"] = self._rate_limit_waits
        out["concurrency_limit"] = self.concurrency_limit
        out["state"] = engine.state() if engine is not None else "stopped"
        return out

    def health(self) -> dict[str, Any]:
        """``{"status": "healthy"|"degraded"|"unhealthy", "message": str, ...}``:
        unhealthy when not running (or its event loop is stuck for 30 s),
        degraded when the backend is not connected or more than 90 % of the
        limit is in flight. The same judgement ``/health`` serves."""
        return self._metrics.health(self.concurrency_limit)

    def metrics_text(self) -> str:
        """Every metric in the Prometheus text format."""
        return self._metrics.render()
