"""Metrics, health and the HTTP server, checked by scraping them."""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

import foxtive

from .conftest import fast_retries


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def parse(text: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value}."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_equal_what_was_processed(memory: foxtive.MemoryBackend) -> None:
    async def handler(m: foxtive.Message) -> None:
        if m.body == b"bad":
            raise ValueError("nope")

    memory.publish_many_sync([b"ok"] * 7 + [b"bad"])
    pool = (
        foxtive.WorkerPoolBuilder("shop").with_middleware(fast_retries(2))
        .add_worker(handler, id="orders").build()
    )
    assert pool.run_until_idle(memory, timeout=10)
    with foxtive.HealthServer(pool, port=0) as server:
        status, text = get(f"{server.url}/metrics")
    assert status == 200
    m = parse(text)
    labels = f'pool="shop",worker="orders",queue="{memory.name}"'
    assert m[f'foxtive_worker_messages_received_total{{pool="shop",queue="{memory.name}"}}'] == 10
    assert m[f'foxtive_worker_messages_processed_total{{{labels},outcome="success"}}'] == 7
    assert m[f'foxtive_worker_messages_processed_total{{{labels},outcome="failure"}}'] == 3
    assert m[f'foxtive_worker_messages_processed_total{{{labels},outcome="retried"}}'] == 2
    assert m[f'foxtive_worker_messages_processed_total{{{labels},outcome="dead_lettered"}}'] == 1
    assert m[f"foxtive_worker_retries_total{{{labels}}}"] == 2
    assert m[f"foxtive_worker_dead_lettered_total{{{labels}}}"] == 1
    assert m[f'foxtive_worker_errors_total{{{labels},error_type="ValueError"}}'] == 3
    assert m[f"foxtive_worker_message_processing_duration_seconds_count{{{labels}}}"] == 10
    assert m[f'foxtive_worker_message_processing_duration_seconds_bucket{{{labels},le="+Inf"}}'] \
        == 10
    assert m['foxtive_worker_in_flight_messages{pool="shop",worker="orders",queue="' +
             memory.name + '"}'] == 0
    assert m['foxtive_worker_circuit_breaker_state{pool="shop"}'] == 0
    assert "nope" not in text  # error texts never become labels
    assert pool.metrics_text() == text


def test_health_and_ready_follow_the_pool(memory: foxtive.MemoryBackend) -> None:
    seen: dict[str, Any] = {}
    release = threading.Event()
    server: list[foxtive.HealthServer] = []

    def handler(m: foxtive.Message) -> None:
        base = server[0].url
        seen["health"] = get(f"{base}/health")
        seen["ready"] = get(f"{base}/ready")
        release.wait(5)

    memory.publish_sync(b"x")
    pool = (
        foxtive.WorkerPoolBuilder("svc").with_concurrency_limit(10)
        .add_worker(handler, id="h").build()
    )
    server.append(foxtive.HealthServer(pool, port=0).start())
    try:
        status, body = get(f"{server[0].url}/ready")
        assert status == 503 and json.loads(body)["state"] == "stopped"
        assert get(f"{server[0].url}/health")[0] == 503
        release.set()
        assert pool.run_until_idle(memory, timeout=10)
        h_status, h_body = seen["health"]
        r_status, _ = seen["ready"]
        assert (h_status, r_status) == (200, 200)
        health = json.loads(h_body)
        assert health["status"] == "healthy" and health["in_flight"] == 1
        assert health["pool"] == "svc" and health["backend"] == "connected"
        assert get(f"{server[0].url}/nope")[0] == 404
        req = urllib.request.Request(f"{server[0].url}/health", method="POST")
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(req, timeout=5)
        assert info.value.code == 405
    finally:
        server[0].stop()
    assert server[0].host == "127.0.0.1"


def test_ready_is_503_while_the_backend_reconnects() -> None:
    from .test_resilient import FlakyBackend

    async def scenario() -> list[int]:
        inner = FlakyBackend()
        backend = foxtive.ResilientBackend(inner, foxtive.ReconnectStrategy.fixed(0.05))

        async def handler(m: foxtive.Message) -> None: ...

        pool = foxtive.WorkerPoolBuilder("r").add_worker(handler, id="h").build()
        codes = []
        with foxtive.HealthServer(pool, port=0) as server:
            run = asyncio.ensure_future(pool.run_async(backend, handle_signals=False))
            while pool.stats()["state"] != "running" or backend.state != "connected":
                await asyncio.sleep(0.01)
            codes.append((await asyncio.to_thread(get, f"{server.url}/ready"))[0])
            inner.down = True
            while backend.state != "reconnecting":
                await asyncio.sleep(0.01)
            codes.append((await asyncio.to_thread(get, f"{server.url}/ready"))[0])
            inner.down = False
            while backend.state != "connected":
                await asyncio.sleep(0.01)
            codes.append((await asyncio.to_thread(get, f"{server.url}/ready"))[0])
            pool.shutdown()
            await run
        return codes

    assert asyncio.run(scenario()) == [200, 503, 200]


def test_prometheus_client_collector(memory: foxtive.MemoryBackend) -> None:
    import prometheus_client

    async def handler(m: foxtive.Message) -> None: ...

    memory.publish_many_sync([b"x"] * 3)
    pool = foxtive.WorkerPoolBuilder("pc").add_worker(handler, id="h").build()
    assert pool.run_until_idle(memory, timeout=10)
    registry = prometheus_client.CollectorRegistry()
    registry.register(foxtive.PrometheusCollector(pool))
    value = registry.get_sample_value(
        "foxtive_worker_messages_processed_total",
        {"pool": "pc", "worker": "h", "queue": memory.name, "outcome": "success"},
    )
    assert value == 3


def test_metrics_of_several_pools_declare_each_family_once(
        memory: foxtive.MemoryBackend) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async def handler(m: foxtive.Message) -> None:
        if m.body == b"bad":
            raise ValueError("nope")

    other = foxtive.MemoryBackend(f"{memory.name}-b")
    memory.publish_many_sync([b"ok"] * 3)
    other.publish_many_sync([b"ok"] * 5 + [b"bad"])
    pools = {
        name: foxtive.WorkerPoolBuilder(name).with_middleware(fast_retries(0))
        .add_worker(handler, id="h").build()
        for name in ("first", "second")
    }
    assert pools["first"].run_until_idle(memory, timeout=10)
    assert pools["second"].run_until_idle(other, timeout=10)
    with foxtive.HealthServer(list(pools.values()), port=0) as server:
        status, text = get(f"{server.url}/metrics")
    assert status == 200
    declared = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(declared) == len(set(declared)), text
    families = list(text_string_to_metric_families(text))
    assert sorted(f.name for f in families) == sorted({f.name for f in families})
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for f in families for s in f.samples}
    expected = {("first", memory.name): (3, 3, 0), ("second", other.name): (6, 5, 1)}
    for (pool, queue), (received, success, dead) in expected.items():
        labels = {"pool": pool, "worker": "h", "queue": queue}
        assert got[("foxtive_worker_messages_received_total",
                    tuple(sorted({"pool": pool, "queue": queue}.items())))] == received
        for outcome, n in (("success", success), ("dead_lettered", dead)):
            key = tuple(sorted({**labels, "outcome": outcome}.items()))
            assert got[("foxtive_worker_messages_processed_total", key)] == n
        # Every sample a pool renders alone is on the page, with its value.
        alone = {(s.name, tuple(sorted(s.labels.items()))): s.value
                 for f in text_string_to_metric_families(pools[pool].metrics_text())
                 for s in f.samples}
        assert alone.items() <= got.items()
    assert got[("foxtive_worker_errors_total", tuple(sorted(
        {"pool": "second", "worker": "h", "queue": other.name,
         "error_type": "ValueError"}.items())))] == 1


def test_health_server_rejects_bad_arguments(memory: foxtive.MemoryBackend) -> None:
    async def handler(m: foxtive.Message) -> None: ...

    pool = foxtive.WorkerPoolBuilder("p").add_worker(handler, id="h").build()
    with pytest.raises(foxtive.ConfigError, match="port"):
        foxtive.HealthServer(pool, port=70000)
    with pytest.raises(foxtive.ConfigError, match="pool"):
        foxtive.HealthServer("pool")  # type: ignore[arg-type]
    first = foxtive.HealthServer(pool, port=0).start()
    try:
        with pytest.raises(foxtive.ConfigError, match="cannot listen"):
            foxtive.HealthServer(pool, port=first.port).start()
    finally:
        first.stop()
