"""Parametrise every contract case over the kits that have what it needs.

A case marked ``@pytest.mark.requires(CAPABILITY, ...)`` is generated only
for kits declaring those capabilities, so a kit that cannot run a case does
not show up as a skipped test: it simply has no such case.

``@pytest.mark.known_bug(KIT, reason=...)`` marks the case for that kit only
as ``xfail(strict=True)``: it fails today because of a bug in foxtive, and
starts failing the suite (XPASS) the day the bug is fixed, so the mark goes."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from .kit import CAPABILITIES, BackendKit, load_kits

KITS = load_kits()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "requires(*capabilities): generate the case only for kits that have them")
    config.addinivalue_line(
        "markers", "known_bug(*kits, reason): a strict xfail for those kits only")
    config.addinivalue_line(
        "markers", "known_flaky(*kits, reason): a non-strict xfail for those kits only "
                   "(a race found but not yet fixed; the reason names it)")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "kit" not in metafunc.fixturenames:
        return
    needed: set[str] = set()
    for mark in metafunc.definition.iter_markers("requires"):
        needed.update(mark.args)
    unknown = needed - CAPABILITIES
    assert not unknown, f"{metafunc.function.__name__}: unknown capabilities {sorted(unknown)}"
    bugs: dict[str, str] = {}
    for mark in metafunc.definition.iter_markers("known_bug"):
        for name in mark.args:
            assert name in KITS, f"known_bug: no kit named {name!r}"
            bugs[name] = mark.kwargs["reason"]
    flaky: dict[str, str] = {}
    for mark in metafunc.definition.iter_markers("known_flaky"):
        for name in mark.args:
            assert name in KITS, f"known_flaky: no kit named {name!r}"
            flaky[name] = mark.kwargs["reason"]

    def marks(name: str) -> list[pytest.MarkDecorator]:
        if name in bugs:
            return [pytest.mark.xfail(strict=True, reason=bugs[name])]
        if name in flaky:
            return [pytest.mark.xfail(strict=False, reason=flaky[name])]
        return []

    params = [
        pytest.param(name, id=name, marks=marks(name))
        for name, kit in KITS.items() if needed <= kit.capabilities
    ]
    metafunc.parametrize("kit", params, indirect=True)


@pytest.fixture
def kit(request: pytest.FixtureRequest) -> Iterator[BackendKit]:
    instance = KITS[request.param]()
    missing = instance.available()
    if missing is not None:
        if os.environ.get("CI"):  # a CI job whose broker did not start must not pass
            pytest.fail(missing)
        pytest.skip(missing)
    try:
        yield instance
    finally:
        instance.cleanup()
