"""Helpers of the dashboard tests: a tiny HTTP client (the stdlib's), and
real dead letters made the way production makes them (a pool whose handler
fails for good, so the broker's native dead-letter queue gets them)."""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any

import foxtive

from .conftest import fast_retries


class Client:
    def __init__(self, port: int, token: str | None = None, host: str = "127.0.0.1") -> None:
        self.port = port
        self.token = token
        self.host = host

    def request(self, method: str, path: str, body: Any = None, *, token: str | None = "default",
                content_type: str = "application/json",
                headers: dict[str, str] | None = None) -> tuple[int, Any, float, dict[str, str]]:
        """(status, decoded JSON or raw bytes, seconds, response headers)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        h = {"Host": f"127.0.0.1:{self.port}"}
        tok = self.token if token == "default" else token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            h["Content-Type"] = content_type
        h.update(headers or {})
        started = time.perf_counter()
        try:
            conn.request(method, path, body=data, headers=h)
            res = conn.getresponse()
            raw = res.read()
            elapsed = time.perf_counter() - started
            ctype = res.getheader("Content-Type") or ""
            decoded: Any = json.loads(raw) if ctype.startswith("application/json") and raw else raw
            return res.status, decoded, elapsed, {k.lower(): v for k, v in res.getheaders()}
        finally:
            conn.close()

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        status, data, _, _ = self.request("GET", path, **kw)
        return status, data

    def post(self, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
        status, data, _, _ = self.request("POST", path, body, **kw)
        return status, data


def failing_pool() -> foxtive.WorkerPool:
    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError(f"cannot ship {m.body[:20]!r}")

    return (foxtive.WorkerPoolBuilder("dashboard-fail").with_middleware(fast_retries(0))
            .add_worker(handler, id="h").with_shutdown_timeout(5.0).build())


def make_dead_letters(backend: Any, n: int, prefix: str = "m") -> None:
    """Publish ``n`` JSON bodies (ids ``{prefix}-{i}``) and dead-letter them
    all through a failing pool."""
    bodies = [json.dumps({"order": i, "note": "ünïcode"}).encode() for i in range(n)]

    async def publish() -> None:
        for start in range(0, n, 500):
            chunk = bodies[start:start + 500]
            await backend.publish_many(
                chunk, headers={"tenant": "acme"},
                message_ids=[f"{prefix}-{start + i}" for i in range(len(chunk))])
        await backend.close()

    asyncio.run(publish())
    pool = failing_pool()
    assert pool.run_until_idle(backend, timeout=120)
    assert pool.stats()["dead_lettered"] == n, pool.stats()


def publish(backend: Any, bodies: list[bytes], delay: float | None = None) -> None:
    async def go() -> None:
        await backend.publish_many(bodies, delay=delay)
        await backend.close()

    asyncio.run(go())
