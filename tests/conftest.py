"""Shared fixtures. Broker tests talk to the real RabbitMQ and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

import foxtive

from .pg_tls_server import TlsPostgres, missing_tools
from .redis_support import REDIS_URL


@pytest.fixture
def memory() -> foxtive.MemoryBackend:
    return foxtive.MemoryBackend(f"test-{uuid.uuid4().hex[:8]}")


def fast_retries(max_retries: int = 3) -> foxtive.RetryHandler:
    """A retry policy with millisecond backoff, so tests finish quickly."""
    return foxtive.RetryHandler(
        max_retries=max_retries, initial_backoff=0.001, max_backoff=0.01, jitter=False
    )


@pytest.fixture(scope="session")
def pg_tls() -> Iterator[TlsPostgres]:
    """A second PostgreSQL, TLS only, on a free port of 127.0.0.1 (see
    ``tests/pg_tls_server.py``): started once for the session, stopped and
    its directory removed at the end."""
    why = missing_tools()
    if why is not None:
        pytest.skip(f"no PostgreSQL with TLS: {why}")
    server = TlsPostgres()
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_plain() -> Iterator[TlsPostgres]:
    """The same throwaway PostgreSQL without TLS (``ssl = off``)."""
    why = missing_tools()
    if why is not None:
        pytest.skip(f"no throwaway PostgreSQL: {why}")
    server = TlsPostgres(tls=False)
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def rclient() -> Iterator[redis.Redis]:
    """A redis-py client on the tests' Redis: the independent judge."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()
