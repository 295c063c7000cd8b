"""Parametrise every contract case over the kits that have what it needs.

A case marked ``@pytest.mark.requires(CAPABILITY, ...)`` is generated only
for kits declaring those capabilities, so a kit that cannot run a case does
not show up as a skipped test: it simply has no such case."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .kit import CAPABILITIES, BackendKit, load_kits

KITS = load_kits()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*capabilities): generate the case only for kits that have them")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kit" not in metafunc.fixturenames:
        return
    needed: set[str] = set()
    for mark in metafunc.definition.iter_markers("requires"):
        needed.update(mark.args)
    unknown = needed - CAPABILITIES
    assert not unknown, f"{metafunc.function.__name__}: unknown capabilities {sorted(unknown)}"
    names = [name for name, kit in KITS.items() if needed <= kit.capabilities]
    metafunc.parametrize("kit", names, indirect=True)


@pytest.fixture
def kit(request: pytest.FixtureRequest) -> Iterator[BackendKit]:
    instance = KITS[request.param]()
    missing = instance.available()
    if missing is not None:
        pytest.skip(missing)
    try:
        yield instance
    finally:
        instance.cleanup()
