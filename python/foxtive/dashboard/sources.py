"""What the dashboard looks at: queues (counts sampled over time, dead
letters), pools and a task result store. Everything read from outside is
passed through :func:`scrub` before it reaches a response."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import _core, schedules
from .._native import native_of
from ..results import MemoryResultStore, RedisResultStore

#: Samples of each queue's counts kept for the rate chart.
HISTORY = 120
#: How long a read of a queue's dead letters is reused (a replay or purge
#: through the dashboard drops it at once) ...
DEAD_LETTER_TTL = 5.0
#: ... or, while the sampled dead count still matches it, this long.
DEAD_LETTER_MAX_AGE = 60.0
#: Most dead letters read from one queue's store.
MAX_DEAD_LETTERS = 10_000
#: Most body bytes returned by the API (the rest is counted, not sent).
MAX_BODY_SHOWN = 64 * 1024

_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s:/@]*:)[^\s@/]*@")
_SECRET_PARAMS = re.compile(r"(?i)\b(password|passwd|pwd|token|secret|api[_-]?key)=([^&\s]+)")


def scrub(text: str) -> str:
    """``text`` with URL passwords and ``password=...``-style values masked."""
    text = _CREDENTIALS.sub(r"\1***@", text)
    return _SECRET_PARAMS.sub(r"\1=***", text)


def header_value(value: Any) -> Any:
    """A header value as JSON: bytes in hex, text scrubbed, tables walked."""
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {str(k): header_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [header_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(repr(value))


def body_views(body: bytes) -> dict[str, Any]:
    """The body as text (when UTF-8), pretty JSON (when JSON) and hex."""
    shown = body[:MAX_BODY_SHOWN]
    out: dict[str, Any] = {"size": len(body), "truncated": len(body) > len(shown),
                           "text": None, "json": None, "hex": shown.hex()}
    try:
        text = shown.decode("utf-8")
    except UnicodeDecodeError:
        return out
    out["text"] = scrub(text)
    if not out["truncated"]:
        try:
            out["json"] = scrub(json.dumps(json.loads(text), indent=2, ensure_ascii=False))
        except ValueError:
            pass
    return out


@dataclass
class Sample:
    t: float
    ready: int | None
    delayed: int | None
    in_progress: int | None
    dead: int | None
    consumers: int | None


class QueueSource:
    """One queue: its backend (for counts) and its dead-letter queue."""

    def __init__(self, name: str, kind: str, backend: Any, dlq: Any) -> None:
        self.name = name
        self.kind = kind
        self.backend = backend
        self.dlq = dlq
        self.history: deque[Sample] = deque(maxlen=HISTORY)
        self.error: str | None = None
        #: (record, its summary for the list), read once per refresh.
        self._records: list[tuple[Any, dict[str, Any]]] | None = None
        self._read_at = 0.0
        self._truncated = False
        self.lock = asyncio.Lock()
        self._sampling = asyncio.Lock()

    async def refresh(self, max_age: float) -> None:
        """Sample now unless the latest sample is younger than ``max_age``
        (requests at once share one sample)."""
        async with self._sampling:
            last = self.latest()
            if last is None or time.time() - last.t > max_age:
                await self.sample()

    async def sample(self) -> None:
        stats: dict[str, Any] | None = None
        error = None
        native = native_of(self.backend)
        try:
            if native is not None:
                stats = await native.queue_stats()
            if stats is None and self.dlq is not None:
                stats = {"dead": await asyncio.to_thread(len, self.dlq)}
        except Exception as e:  # shown on the page, the sampler goes on
            error = scrub(f"{type(e).__name__}: {e}")
        self.error = error
        s = stats or {}
        self.history.append(Sample(time.time(), s.get("ready"), s.get("delayed"),
                                   s.get("in_progress"), s.get("dead"), s.get("consumers")))

    def latest(self) -> Sample | None:
        return self.history[-1] if self.history else None

    def view(self, since: float) -> dict[str, Any]:
        last = self.latest()
        counts = {k: getattr(last, k) if last else None
                  for k in ("ready", "delayed", "in_progress", "dead", "consumers")}
        hist = [s for s in self.history if s.t >= since]
        return {
            "name": self.name, "backend": self.kind, "counts": counts,
            "sampled_at": last.t if last else None, "error": self.error,
            "has_dead_letters": self.dlq is not None,
            "history": [{"t": round(s.t, 3), "ready": s.ready, "delayed": s.delayed,
                         "in_progress": s.in_progress, "dead": s.dead} for s in hist],
            "net_rate": net_rate(hist),
        }

    async def dead_letters(self) -> tuple[list[tuple[Any, dict[str, Any]]], bool]:
        """The queue's dead letters (oldest first, at most
        :data:`MAX_DEAD_LETTERS`), re-read after :data:`DEAD_LETTER_TTL`."""
        if self.dlq is None:
            return [], False
        async with self.lock:
            if not self._fresh():
                dlq = self.dlq

                def read() -> list[Any]:
                    # Read one more than allowed: more means truncated.
                    records: list[Any] = dlq.get_failed_messages(limit=MAX_DEAD_LETTERS + 1)
                    return records
                records = await asyncio.to_thread(read)
                self._truncated = len(records) > MAX_DEAD_LETTERS
                self._records = [(d, dead_letter_summary(self.name, d))
                                 for d in records[:MAX_DEAD_LETTERS]]
                self._read_at = time.monotonic()
            return self._records or [], self._truncated

    def _fresh(self) -> bool:
        if self._records is None:
            return False
        age = time.monotonic() - self._read_at
        if age <= DEAD_LETTER_TTL:
            return True
        last = self.latest()
        # Same count as when read (nothing died or left since): still good.
        return (age <= DEAD_LETTER_MAX_AGE and not self._truncated and last is not None
                and last.t > time.time() - age and last.dead == len(self._records))

    def forget_dead_letters(self) -> None:
        self._records = None


def net_rate(hist: list[Sample]) -> float | None:
    """Messages a second by which the backlog (ready + delayed + in
    progress) grew over the samples: enqueues minus completions."""
    pts = [(s.t, (s.ready or 0) + (s.delayed or 0) + (s.in_progress or 0))
           for s in hist if s.ready is not None]
    if len(pts) < 2 or pts[-1][0] <= pts[0][0]:
        return None
    return round((pts[-1][1] - pts[0][1]) / (pts[-1][0] - pts[0][0]), 3)


def dead_letter_summary(queue: str, d: Any) -> dict[str, Any]:
    return {
        "id": d.original_id, "queue": queue, "source_queue": d.source_queue,
        "error_type": d.error_type, "error_message": scrub(d.error_message[:500]),
        "failed_at": d.failed_at, "attempts": d.attempts, "poison_pill": d.poison_pill,
        "worker_id": scrub(d.worker_id), "body_size": len(d.body),
    }


def dead_letter_detail(queue: str, d: Any) -> dict[str, Any]:
    out = dead_letter_summary(queue, d)
    out["error_message"] = scrub(d.error_message)
    out["headers"] = {str(k): header_value(v) for k, v in d.headers.items()}
    out["body"] = body_views(d.body)
    return out


class PoolSource:
    """A pool running in this process."""

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self.history: deque[tuple[float, int]] = deque(maxlen=HISTORY)
        self.started = time.time()

    def sample(self) -> None:
        self.history.append((time.time(), int(self.pool.stats().get("processed", 0))))

    def view(self) -> dict[str, Any]:
        pool = self.pool
        stats = pool.stats()
        rl = pool.rate_limit
        breaker = pool.breaker
        hist = list(self.history)
        rate = None
        if len(hist) >= 2 and hist[-1][0] > hist[0][0]:
            rate = round((hist[-1][1] - hist[0][1]) / (hist[-1][0] - hist[0][0]), 3)
        workers = stats.get("workers", {})
        return {
            "name": pool.name, "state": stats.get("state"),
            "in_flight": stats.get("in_flight"),
            "concurrency_limit": stats.get("concurrency_limit"),
            "workers": [{"id": k, "in_flight": v} for k, v in workers.items()],
            "circuit_breaker": stats.get("circuit_breaker") if breaker is not None else None,
            "rate_limit": None if rl is None else {
                "per_second": getattr(rl, "per_second", None),
                "burst": getattr(rl, "burst", None),
                # Counted by the core's limiter while the pool runs.
                "waits": stats.get("rate_limit_waits"),
                "wait_seconds": stats.get("rate_limit_wait_seconds"),
            },
            "counters": {k: stats.get(k) for k in ("received", "processed", "failed",
                                                   "retried", "dead_lettered", "requeued")},
            "completed_per_second": rate,
            "health": pool.health().get("status"),
            "uptime_seconds": round(time.time() - self.started, 1),
            "history": [{"t": round(t, 3), "processed": n} for t, n in hist],
        }


async def task_record(store: Any, task_id: str) -> dict[str, Any] | None:
    """A task's result record from an app's result store, or None."""
    if isinstance(store, MemoryResultStore):
        with store._cond:
            record = store._get(task_id)
        return None if record is None else dict(record)
    if isinstance(store, RedisResultStore):
        raw = await store._client().get(store._key(task_id))
        return None if raw is None else dict(json.loads(raw))
    status = await store.status(task_id)
    return None if status == "unknown" else {"status": status}


def redact(url: str) -> str:
    return scrub(_core.redact_url(url))


class ScheduleSource:
    """The schedules the dashboard shows: those of its app (``describe``:
    triggers from code, lease and ticks from the broker), or, with no app,
    what the broker's lease and tick store alone holds for the app names it
    was given (``foxtive dashboard --broker URL --schedule-apps a,b``)."""

    def __init__(self, app: Any = None, broker: str | None = None,
                 app_names: Iterable[str] = (), results: str | None = None) -> None:
        self.app = app
        self.broker = broker
        self.app_names = list(app_names)
        self.results = results

    @property
    def empty(self) -> bool:
        return (self.app is None or not self.app.schedules) and not (
            self.broker and self.app_names)

    async def view(self) -> dict[str, Any]:
        reads: list[Any] = []
        if self.app is not None and self.app.schedules:
            reads.append(schedules.describe(self.app))
        if self.broker is not None:
            own = self.app.name if self.app is not None else None
            reads += [schedules.describe_stored(name, self.broker, self.results)
                      for name in self.app_names if name != own]
        rows: list[dict[str, Any]] = []
        errors: list[str] = []
        for got in await asyncio.gather(*reads, return_exceptions=True):
            if isinstance(got, BaseException):
                errors.append(scrub(f"{type(got).__name__}: {got}"))
                continue
            for s in got["schedules"]:
                rows.append({"app": got["app"], **s, "leader": got["leader"]})
        return {"schedules": rows, "errors": errors}
