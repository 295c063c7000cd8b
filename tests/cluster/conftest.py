"""Tests against broker clusters the tests start themselves (marker ``cluster``).

They are not part of the default run (``pyproject.toml``: ``addopts = -m 'not
cluster'``); ``scripts/test-cluster`` runs only them. Every module here sets
``pytestmark = pytest.mark.cluster``. Fixtures: ``redis_cluster`` (6 Redis
servers on 127.0.0.1:7000-7005, 3 masters + 3 replicas, data in a temporary
directory, all killed at the end of the session, also on failure); RabbitMQ
fixtures live in ``rabbitmq.py``.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .redis_cluster import RedisClusterProcesses


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterProcesses]:
    cluster = RedisClusterProcesses(tmp_path_factory.mktemp("redis-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
