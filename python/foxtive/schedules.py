"""Schedules: tasks enqueued on a cron expression or every N seconds,
exactly once however many ``foxtive run`` processes run a scheduler.

    @app.periodic(cron="*/5 * * * *", tz="UTC")
    async def purge_sessions() -> None: ...

    app.schedule(build_report, cron="0 9 * * MON", tz="Europe/Berlin", args=(7,),
                 name="weekly-report")

Everything that decides is in Rust (``foxtive_core::schedule``): the cron
arithmetic (the ``croner`` crate, DST per its documented rules), the leader
lease held in the broker itself, the last tick stored there, catch-up, and
the loop that enqueues each tick with message id
``"<name>@YYYY-MM-DDTHH:MM:SSZ"``. This module registers schedules, builds
each one's task message once, and starts and stops the Rust scheduler.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import inspect
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from . import _core, envelope
from ._config import seconds
from .backends import MemoryBackend
from .errors import ConfigError
from .nats import NatsBackend
from .tasks import Task

__all__ = [
    "CATCH_UP",
    "LEASE_ENV",
    "Schedule",
    "SchedulerRunner",
    "describe",
    "describe_stored",
]

R = TypeVar("R")

#: The catch-up policies: one run for the latest missed tick, one per missed
#: tick, or none.
CATCH_UP = ("latest", "all", "none")

#: Environment variable: the leader lease in seconds (default 10, the most
#: allowed; tests use less so that a killed leader is replaced sooner).
LEASE_ENV = "FOXTIVE_SCHEDULE_LEASE"


class ScheduleApp(Protocol):
    """What schedules need from an app (``foxtive.App``)."""

    name: str
    broker: Any
    results: Any
    _tasks: dict[str, Task[Any, Any]]
    _schedules: dict[str, Schedule]

    @property
    def task(self) -> Callable[..., Any]: ...

    def backend(self, queue: str) -> Any: ...


@dataclass(frozen=True)
class Schedule:
    """One registered schedule (``app.schedules[name]``)."""

    name: str
    task: Task[Any, Any]
    trigger: _core.ScheduleTrigger
    queue: str
    catch_up: str
    cron: str | None = None
    every: float | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def tz(self) -> str:
        return self.trigger.tz

    def next_runs(self, n: int = 3, after: float | None = None) -> list[_dt.datetime]:
        """The next ``n`` ticks after ``after`` (unix time; default now), UTC."""
        start = time.time() if after is None else after
        return [_dt.datetime.fromtimestamp(t, _dt.UTC)
                for t in self.trigger.next_ticks(start, n)]


def _check(catch_up: str, name: str | None, queue: str | None) -> None:
    if catch_up not in CATCH_UP:
        raise ConfigError(f"catch_up: expected one of {', '.join(map(repr, CATCH_UP))}, "
                          f"got {catch_up!r}")
    if name is not None and (not isinstance(name, str) or not name or "@" in name):
        raise ConfigError(f"name: must be a non-empty string without '@', got {name!r}")
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise ConfigError("queue: must be a non-empty string")


def _trigger(cron: str | None, every: float | _dt.timedelta | None, tz: str
             ) -> tuple[_core.ScheduleTrigger, float | None]:
    if (cron is None) == (every is None):
        raise ConfigError("schedule: give exactly one of cron=\"...\" or every=timedelta/seconds")
    if not isinstance(tz, str):
        raise ConfigError(f"tz: expected an IANA time zone name, got {type(tz).__name__}")
    if cron is not None and not isinstance(cron, str):
        raise ConfigError(f"cron: expected a string, got {type(cron).__name__}")
    period = None if every is None else seconds("every", every, positive=True)
    return _core.ScheduleTrigger(cron=cron, every=period, tz=tz), period


def add(app: ScheduleApp, task: Task[Any, R], *, cron: str | None = None,
        every: float | _dt.timedelta | None = None, tz: str = "UTC", name: str | None = None,
        queue: str | None = None, catch_up: str = "latest", args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None) -> Schedule:
    """``app.schedule(task, ...)``: enqueue ``task(*args, **kwargs)`` on each tick."""
    if not isinstance(task, Task):
        raise ConfigError(f"task: expected a task registered with @app.task, got "
                          f"{type(task).__name__}")
    if app._tasks.get(task.name) is not task:
        raise ConfigError(f"task: {task.name!r} is not a task of app {app.name!r}")
    _check(catch_up, name, queue)
    trigger, period = _trigger(cron, every, tz)
    kwargs = dict(kwargs or {})
    try:
        inspect.signature(task.fn).bind(*args, **kwargs)
    except TypeError as e:
        raise ConfigError(f"args: task {task.name!r} cannot be called with the schedule's "
                          f"arguments: {e}") from None
    envelope.encode(list(args), kwargs)  # an argument that cannot travel fails now
    schedule = Schedule(name=name or task.name, task=task, trigger=trigger,
                        queue=queue or task.queue, catch_up=catch_up, cron=cron,
                        every=period, args=tuple(args), kwargs=kwargs)
    if schedule.name in app._schedules:
        raise ConfigError(f"name: a schedule named {schedule.name!r} is already registered on "
                          f"app {app.name!r}; pass name=...")
    app._schedules[schedule.name] = schedule
    return schedule


def periodic(app: ScheduleApp, *, cron: str | None = None,
             every: float | _dt.timedelta | None = None, tz: str = "UTC",
             name: str | None = None, queue: str | None = None, catch_up: str = "latest"
             ) -> Callable[[Callable[..., R]], Task[Any, R]]:
    """``@app.periodic(...)``: register the function as a task (on ``queue``,
    default "default") and schedule it; it must need no arguments."""
    _check(catch_up, name, queue)
    _trigger(cron, every, tz)  # fail at decoration time

    def register(fn: Callable[..., R]) -> Task[Any, R]:
        task: Task[Any, R] = fn if isinstance(fn, Task) else app.task(queue=queue or "default")(fn)
        add(app, task, cron=cron, every=every, tz=tz, name=name, queue=queue,
            catch_up=catch_up)
        return task

    return register


def _lease() -> float:
    raw = os.environ.get(LEASE_ENV)
    if not raw:
        return 10.0
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{LEASE_ENV}: expected seconds, got {raw!r}") from None


def broker_url(app: ScheduleApp) -> str:
    """Where the app's lease and last ticks live: its broker URL, or
    ``memory://`` for a factory of memory backends (see :func:`broker_of`)."""
    return broker_of(app)[0]


def broker_of(app: ScheduleApp) -> tuple[str, dict[str, str | None]]:
    """Where the app's lease and last ticks live and what connects there
    besides the URL: the broker URL (its credentials in it, if any), or for
    a factory of :class:`foxtive.NatsBackend` its backend's URL and
    credentials (``token``, ``nkey_file``, ``creds_file``), as its result
    store takes them (``NatsResultStore.for_backend``)."""
    if isinstance(app.broker, str):
        return app.broker, {}
    queues = sorted({s.queue for s in app._schedules.values()}) or ["default"]
    backend = app.backend(queues[0])
    if isinstance(backend, MemoryBackend):
        return "memory://", {}
    if isinstance(backend, NatsBackend):
        c = backend._credentials
        return c.url, c.options()
    raise ConfigError("schedules: an app whose broker is a factory keeps its schedule lease "
                      "nowhere foxtive knows (memory and NATS backends do); give the app a "
                      "broker URL")


def results_url(app: ScheduleApp) -> str | None:
    """The app's result store URL, if it names one: where a RabbitMQ app's
    lease and last ticks live (RabbitMQ has no store of its own)."""
    results = getattr(app, "results", None)
    return results if isinstance(results, str) else None


class SchedulerRunner:
    """The Rust scheduler of one app in this process."""

    def __init__(self, app: ScheduleApp, lease: float | None = None) -> None:
        self.app = app
        url, credentials = broker_of(app)
        self._core = _core.Scheduler(app.name, url, _lease() if lease is None else lease,
                                     results=results_url(app), credentials=credentials)
        for s in app._schedules.values():
            headers = envelope.headers_for(s.task.name)
            body = envelope.encode(list(s.args), dict(s.kwargs))
            self._core.add(s.name, s.trigger, s.catch_up, app.backend(s.queue), body, headers)

    def start(self) -> SchedulerRunner:
        self._core.start()
        return self

    @property
    def leader(self) -> bool:
        """True while this process leads the app's schedules."""
        return self._core.leader

    def metrics_text(self) -> str:
        """Ticks enqueued, ticks skipped by catch-up, leader changes (Prometheus)."""
        return self._core.metrics_text()

    async def stop(self) -> None:
        """Stop the loops and release the lease (another process takes over)."""
        self._core.stop()
        await self._core.wait()


def start(app: ScheduleApp) -> SchedulerRunner | None:
    """A running scheduler for ``app``, or None when it has no schedules."""
    if not app._schedules:
        return None
    return SchedulerRunner(app).start()


def _iso(t: float, trigger: _core.ScheduleTrigger | None = None) -> str:
    if trigger is not None:
        return trigger.local_iso(t)
    return _dt.datetime.fromtimestamp(t, _dt.UTC).isoformat().replace("+00:00", "Z")


async def describe(app: ScheduleApp, n: int = 3) -> dict[str, Any]:
    """What ``foxtive schedules`` prints: each schedule with its next ``n``
    runs (in its zone and in UTC) and its last tick, and the leader."""
    url, credentials = broker_of(app)
    leader, stored = await _core.schedule_status(app.name, url, results_url(app), credentials)
    last = {name: t for name, (t, _fingerprint) in stored}
    now = time.time()
    out: list[dict[str, Any]] = []
    for s in sorted(app._schedules.values(), key=lambda s: s.name):
        ticks = s.trigger.next_ticks(now, n)
        out.append({
            "name": s.name, "task": s.task.name, "queue": s.queue,
            "cron": s.cron, "every": s.every, "tz": s.tz, "catch_up": s.catch_up,
            "next": [{"local": _iso(t, s.trigger), "utc": _iso(t)} for t in ticks],
            "last_tick": None if s.name not in last else _iso(last[s.name]),
        })
    return {"app": app.name, "leader": _leader(leader), "schedules": out}


def _leader(leader: tuple[str, int, int, float] | None) -> dict[str, Any] | None:
    return None if leader is None else {
        "host": leader[0], "pid": leader[1], "token": leader[2],
        "expires_in": round(leader[3], 3)}


def _from_fingerprint(fingerprint: str) -> tuple[str | None, float | None, str] | None:
    """``(cron, every, tz)`` of a stored fingerprint (``cron:EXPR@TZ`` or
    ``every:SECONDS``), None when it is neither."""
    kind, _, rest = fingerprint.partition(":")
    if kind == "cron" and "@" in rest:
        expr, _, tz = rest.rpartition("@")
        return expr, None, tz
    if kind == "every":
        try:
            return None, float(rest), "UTC"
        except ValueError:
            return None
    return None


async def describe_stored(app_name: str, broker: str, results: str | None = None,
                          n: int = 3) -> dict[str, Any]:
    """What the broker alone knows of app ``app_name``'s schedules (no App
    object: ``foxtive dashboard --broker URL``): each schedule that ever
    ticked, its trigger as stored with its last tick (so next runs follow
    the rules it last ran under), and the leader. ``task``/``queue`` are
    unknown here (None)."""
    leader, stored = await _core.schedule_status(app_name, broker, results)
    now = time.time()
    out: list[dict[str, Any]] = []
    for name, (last, fingerprint) in sorted(stored):
        parsed = _from_fingerprint(fingerprint)
        cron, every, tz = parsed if parsed is not None else (None, None, "UTC")
        trigger = None
        if parsed is not None:
            try:
                trigger = _core.ScheduleTrigger(cron=cron, every=every, tz=tz)
            except ConfigError:
                trigger = None
        ticks = [] if trigger is None else trigger.next_ticks(now, n)
        out.append({
            "name": name, "task": None, "queue": None, "cron": cron, "every": every,
            "tz": tz, "catch_up": None,
            "next": [{"local": _iso(t, trigger), "utc": _iso(t)} for t in ticks],
            "last_tick": _iso(last),
        })
    return {"app": app_name, "leader": _leader(leader), "schedules": out}


def describe_sync(app: ScheduleApp, n: int = 3) -> dict[str, Any]:
    """Blocking form of :func:`describe`."""
    return asyncio.run(describe(app, n))
