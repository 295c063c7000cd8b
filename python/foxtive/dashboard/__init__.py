"""The operator's dashboard: queues, pools, schedules, dead letters and tasks in a web page.

    foxtive dashboard --broker redis://localhost:6379 --queues emails,images
    foxtive.HealthServer(pool, port=8080, dashboard=True).start()   # the page at /

Why a Python asyncio server (stdlib only) and not the Rust health server:
everything the page acts on already lives in Python: dead-letter replays must
run the code ``foxtive dlq replay`` runs (``DeadLetterQueue.replay``), task
look-ups go through the app's result store (redis-py or in-process), pools
are Python objects. A Rust server would have to call back into Python for
all of it. The counts themselves come from Rust (``queue_stats()`` of each
core backend), and with ``HealthServer(pool, dashboard=True)`` the Rust
server stays in front: it answers ``/health``, ``/ready`` and ``/metrics``
itself (a handler holding the GIL cannot make them late) and passes every
other path to this server on a loopback port.

Security: binds 127.0.0.1 unless told otherwise, and refuses to start on any
other address without a token (``token=`` / ``--token`` /
``$FOXTIVE_DASHBOARD_TOKEN``). With a token, every ``/api/`` request but
``/api/info`` and ``/api/openapi.json`` needs ``Authorization: Bearer
<token>``. Changes (replay, purge) are POSTs with a JSON body; GETs change
nothing. No CORS headers; on loopback the ``Host`` header must name the
loopback address (no DNS rebinding). Broker URLs are shown with their
password redacted, and error texts, headers and bodies are scrubbed of URL
passwords. Requests are bounded (16 KiB heads, 64 KiB bodies) and rated
(per client: 50 a second, bursts of 200).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Iterable
from typing import Any

from .. import _core
from .._native import native_of
from ..broker_dlq import broker_dlq
from ..errors import ConfigError
from ..urls import backend_from_url
from .api import Api, is_loopback
from .http import HttpServer, RateLimiter
from .sources import PoolSource, QueueSource, ScheduleSource, redact

__all__ = ["Dashboard"]

#: Seconds between two samples of every queue's counts.
SAMPLE_INTERVAL = 5.0
DEFAULT_PORT = 8181


class Dashboard:
    """Serve the dashboard for the queues of ``broker`` (a URL) and/or
    ``pools`` running in this process; ``app`` adds its queues, its result
    store (task look-up) and its schedules. ``schedule_apps``: app names
    whose schedules (lease and last ticks) are read from ``broker`` alone,
    with no App object; ``results``: their result store URL (where a
    RabbitMQ app keeps them)."""

    def __init__(self, *, broker: str | None = None, queues: Iterable[str] = (),
                 pools: Iterable[Any] = (), app: Any = None, host: str = "127.0.0.1",
                 port: int = DEFAULT_PORT, token: str | None = None,
                 sample_interval: float = SAMPLE_INTERVAL, rate: float = 50.0,
                 burst: int = 200, public: tuple[str, int] | None = None,
                 schedule_apps: Iterable[str] = (), results: str | None = None) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port: expected an integer from 0 to 65535, got {port!r}")
        token = token if token is not None else os.environ.get("FOXTIVE_DASHBOARD_TOKEN") or None
        public_host = public[0] if public else host
        if not is_loopback(public_host) and not token:
            raise ConfigError(
                f"token: the dashboard refuses to listen on {public_host} (not a loopback "
                "address) without a token; pass --token T or set FOXTIVE_DASHBOARD_TOKEN")
        if token is not None and len(token) < 8:
            raise ConfigError("token: at least 8 characters")
        self.host, self.port = host, port
        self.token = token
        self.sample_interval = sample_interval
        self._public = public
        self._rate = (rate, burst)
        self._broker = broker
        self._queue_names = list(queues)
        self._pools = list(pools)
        self._app = app
        # With no App object, schedules are read from the broker by app name.
        self._schedule_apps = list(schedule_apps)
        self._schedule_results = results
        if app is not None and not self._queue_names and broker is None:
            self._queue_names = list(app.queues)
        if broker is None and app is not None and isinstance(app.broker, str):
            self._broker = app.broker
        if self._broker is not None and not self._queue_names:
            raise ConfigError("queues: name the queues to show (--queues a,b)")
        self.api: Api | None = None
        self._server: HttpServer | None = None
        self._sampler: asyncio.Task[None] | None = None
        self._warm: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    # --------------------------------------------------------------- sources
    def _sources(self) -> list[QueueSource]:
        out: list[QueueSource] = []
        if self._broker is not None:
            kind, _ = _core.backend_kind(self._broker)
            for name in self._queue_names:
                try:
                    dlq = broker_dlq(self._broker, name, None)
                    backend = dlq.backend
                except ConfigError:  # a backend without a DLQ of its own
                    dlq, backend = None, backend_from_url(self._broker, name)
                out.append(QueueSource(name, kind, backend, dlq))
        for pool in self._pools:
            backend = pool.backend
            if backend is None:
                continue
            native = native_of(backend)
            name = native.name if native is not None else str(getattr(backend, "name", pool.name))
            dlq = pool.retry.dead_letter_queue
            if dlq is None:
                with contextlib.suppress(Exception):
                    dlq = backend.dead_letter_queue()
            kind = type(backend).__name__
            if name not in {s.name for s in out}:
                out.append(QueueSource(name, kind, backend, dlq))
        return out

    def _schedule_source(self) -> ScheduleSource:
        results = self._schedule_results
        if results is None and self._app is not None and isinstance(self._app.results, str):
            results = self._app.results
        return ScheduleSource(app=self._app, broker=self._broker,
                              app_names=self._schedule_apps, results=results)

    def _results(self) -> Any:
        if self._app is None:
            return None
        try:
            return self._app._result_store()
        except ConfigError:
            return None

    # -------------------------------------------------------------- running
    async def start_async(self) -> Dashboard:
        """Bind and serve on the running loop; returns self."""
        if self._server is not None:
            return self
        queues = self._sources()
        pools = [PoolSource(p) for p in self._pools]
        public = self._public or (self.host, self.port)
        self.api = Api(queues=queues, pools=pools, results=self._results(),
                       broker=None if self._broker is None else redact(self._broker),
                       token=self.token, public_host=public[0], public_port=public[1],
                       schedules=self._schedule_source())
        server = HttpServer(self.api, RateLimiter(*self._rate))
        self.host, self.port = await server.start(self.host, self.port)
        self._server = server
        if self._public is None:
            self.api.set_public(self.host, self.port)
        await self._sample_once()
        self._sampler = asyncio.ensure_future(self._sample_forever())
        # Read the dead letters ahead of the first page (in the background:
        # a long RabbitMQ dead-letter queue must not delay the start).
        self._warm = asyncio.ensure_future(self._warm_up())
        return self

    async def _sample_once(self) -> None:
        api = self.api
        if api is None:
            return
        await asyncio.gather(*(q.sample() for q in api.queues.values()))
        for p in api.pools:
            p.sample()

    async def _warm_up(self) -> None:
        if self.api is not None:
            await asyncio.gather(*(q.dead_letters() for q in self.api.queues.values()),
                                 return_exceptions=True)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sample_interval)
            await self._sample_once()

    async def stop_async(self) -> None:
        if self._warm is not None:
            self._warm.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warm
            self._warm = None
        if self._sampler is not None:
            self._sampler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sampler
            self._sampler = None
        if self._server is not None:
            await self._server.close()
            self._server = None
        if self.api is not None:
            for q in self.api.queues.values():
                close = getattr(q.backend, "close", None)
                if close is not None and not self._pools:
                    with contextlib.suppress(Exception):
                        await close()

    async def serve_forever(self) -> None:
        """Serve until cancelled (``foxtive dashboard``)."""
        await self.start_async()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop_async()

    def start(self) -> Dashboard:
        """Serve from a thread of its own (with its own event loop); returns
        once listening. A bind or configuration error is raised here."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        failure: list[BaseException] = []

        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.start_async()
            except BaseException as e:
                failure.append(e)
                ready.set()
                return
            ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.stop_async()

        self._thread = threading.Thread(target=asyncio.run, args=(main(),),
                                        name="foxtive-dashboard", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            self._thread = None
            raise failure[0]
        return self

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        self._thread = None

    def set_public(self, host: str, port: int) -> None:
        """The address users reach when a server in front passes requests on."""
        self._public = (host, port)
        if self.api is not None:
            self.api.set_public(host, port)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> Dashboard:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"Dashboard({self.url}, {state})"
