"""Shared fixtures. Broker tests talk to the real RabbitMQ and Redis."""

from __future__ import annotations

import uuid

import pytest

import foxtive


@pytest.fixture
def memory() -> foxtive.MemoryBackend:
    return foxtive.MemoryBackend(f"test-{uuid.uuid4().hex[:8]}")


def fast_retries(max_retries: int = 3) -> foxtive.RetryHandler:
    """A retry policy with millisecond backoff, so tests finish quickly."""
    return foxtive.RetryHandler(
        max_retries=max_retries, initial_backoff=0.001, max_backoff=0.01, jitter=False
    )
