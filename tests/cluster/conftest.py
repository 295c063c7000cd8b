"""Cluster tests (marker ``cluster``): they start their own brokers, take
minutes, and run in their own CI step (``pytest -m cluster tests/cluster``).
A plain ``pytest`` run deselects them (not skipped: they never run there).

Minimal version from the rabbitcluster branch; the rediscluster branch
brings the full wiring (``scripts/test-cluster``)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "cluster: starts its own broker cluster; run with -m cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "cluster" in (config.option.markexpr or ""):
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        (drop if item.get_closest_marker("cluster") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
