"""Operations: the health and metrics HTTP server, and a prometheus_client bridge."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from . import _core
from .dashboard import Dashboard
from .errors import ConfigError
from .pool import WorkerPool

__all__ = ["HealthServer", "PrometheusCollector"]


class HealthServer:
    """Serve ``GET /health`` (liveness: 200 healthy or degraded, 503 unhealthy),
    ``GET /ready`` (200 only while running, not draining, backend connected)
    and ``GET /metrics`` (Prometheus) for a pool, from Rust: a CPU-bound
    handler holding the GIL cannot make a healthy worker look dead.

    Binds 127.0.0.1 unless told otherwise; ``port=0`` picks a free port.

    ``dashboard=True``: the dashboard (:mod:`foxtive.dashboard`) at ``/``
    for this pool, served by a Python server on a loopback port that the
    Rust server passes every other path to. On an address other than
    loopback it needs ``token`` (or ``$FOXTIVE_DASHBOARD_TOKEN``).
    ``app``: an App whose result store the dashboard's task look-up uses.

    ``pool`` may also be a list of pools (``foxtive run app`` runs one per
    queue): ``/health`` is 200 only if every pool is live, ``/ready`` only if
    every pool is ready, the body lists each pool's health under ``pools``,
    and ``/metrics`` has every pool's series."""

    def __init__(self, pool: WorkerPool | Sequence[WorkerPool], host: str = "127.0.0.1",
                 port: int = 8080, dashboard: bool = False, token: str | None = None,
                 app: Any = None) -> None:
        pools = [pool] if isinstance(pool, WorkerPool) else list(pool)
        if not pools or not all(isinstance(p, WorkerPool) for p in pools):
            raise ConfigError(f"pool: expected a foxtive.WorkerPool or a non-empty list of "
                              f"them, got {type(pool).__name__}")
        self.pools = pools
        pool = pools[0]
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port: expected an integer from 0 to 65535, got {port!r}")
        self.pool = pool
        self.host = host
        self.port = port
        self.dashboard = bool(dashboard)
        self._token = token
        self._app = app
        self._dashboard: Any = None
        self._server: _core.HttpServer | None = None

    def start(self) -> HealthServer:
        """Start serving in the background (idempotent); returns self."""
        if self._server is None:
            dashboard_port = None
            if self.dashboard:
                self._dashboard = Dashboard(pools=self.pools, app=self._app, host="127.0.0.1",
                                            port=0, token=self._token,
                                            public=(self.host, self.port)).start()
                dashboard_port = self._dashboard.port
            try:
                self._server = _core.HttpServer(
                    [(p._metrics, p.concurrency_limit) for p in self.pools], self.host,
                    self.port, dashboard_port,
                )
            except BaseException:
                self._stop_dashboard()
                raise
            self.port = self._server.port
            if self._dashboard is not None:
                self._dashboard.set_public(self.host, self.port)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
        self._stop_dashboard()

    def _stop_dashboard(self) -> None:
        if self._dashboard is not None:
            self._dashboard.stop()
            self._dashboard = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "serving" if self._server is not None else "stopped"
        return f"HealthServer({self.url}, {state})"


class PrometheusCollector:
    """A ``prometheus_client`` collector for apps that already expose metrics:

        prometheus_client.REGISTRY.register(foxtive.PrometheusCollector(pool))
    """

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterator[Any]:
        from prometheus_client.parser import text_string_to_metric_families

        yield from text_string_to_metric_families(self.pool.metrics_text())

    def describe(self) -> list[Any]:
        return []
