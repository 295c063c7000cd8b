"""The dashboard's JSON API (``/api/...``) and its static page.

Reads are GETs with no side effects. Changes (replay, purge) are POSTs with
a JSON body (``Content-Type: application/json``: a cross-site form or a
"simple" cross-origin request cannot send one) and, when a token is set,
``Authorization: Bearer <token>``. When a token is set every ``/api/`` read
needs it too, except ``/api/info`` and ``/api/openapi.json``.
"""

from __future__ import annotations

import asyncio
import hmac
import os
import time
from typing import Any

from .. import _logs
from .._core import __version__
from .http import HttpError, Request, Response
from .openapi import document
from .sources import (
    PoolSource,
    QueueSource,
    ScheduleSource,
    dead_letter_detail,
    scrub,
    task_record,
)

#: Most dead letters in one page of ``GET /api/dead-letters``.
MAX_PAGE = 500
#: Most ids in one replay request.
MAX_IDS = 10_000
#: Oldest counts ``GET /api/queues`` answers with, in seconds.
FRESH = 1.0

_STATIC = {"/": ("index.html", "text/html; charset=utf-8"),
           "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
           "/static/style.css": ("style.css", "text/css; charset=utf-8")}


def _static(name: str) -> bytes:
    # Package data next to this file (in the wheel too); read with os.path,
    # not importlib.resources, which costs `import foxtive` ~50 ms.
    with open(os.path.join(os.path.dirname(__file__), "static", name), "rb") as f:
        return f.read()


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    import ipaddress  # only when a dashboard starts

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Api:
    def __init__(self, *, queues: list[QueueSource], pools: list[PoolSource],
                 results: Any, broker: str | None, token: str | None,
                 public_host: str, public_port: int,
                 schedules: ScheduleSource | None = None) -> None:
        self.queues = {q.name: q for q in queues}
        self.pools = pools
        self.schedules = schedules
        self.results = results
        self.broker = broker
        self.token = token
        self.set_public(public_host, public_port)
        self._static = {path: (_static(name), ctype) for path, (name, ctype) in _STATIC.items()}

    def set_public(self, host: str, port: int) -> None:
        """The address users reach: on loopback, requests must name it in
        ``Host`` (a DNS-rebinding page cannot)."""
        self.public_port = port
        self.check_host = is_loopback(host)
        self.allowed_hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]")}

    # ------------------------------------------------------------ dispatch
    async def __call__(self, req: Request) -> Response:
        if self.check_host and (req.header("host") or "").lower() not in self.allowed_hosts:
            return Response.error(421, "unexpected Host header")
        path = req.path
        if req.method in ("GET", "HEAD"):
            if path in self._static:
                body, ctype = self._static[path]
                return Response(200, body, ctype, [("Cache-Control", "no-cache")])
            if path in ("/api/info", "/api/openapi.json"):
                return await self._open_get(path)
            if path.startswith("/api/"):
                self._authorize(req)
                return await self._get(req)
            return Response.error(404, "not found")
        if req.method == "POST" and path.startswith("/api/"):
            self._check_post(req)
            return await self._post(req)
        return Response.error(405, "method not allowed")

    def _authorize(self, req: Request) -> None:
        if self.token is None:
            return
        given = req.header("authorization") or ""
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                value.strip().encode(), self.token.encode()):
            raise HttpError(401, "this dashboard needs its token: Authorization: Bearer <token>")

    def _check_post(self, req: Request) -> None:
        ctype = (req.header("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise HttpError(415, "changes are POSTs with Content-Type: application/json")
        origin = req.header("origin")
        if origin is not None and origin not in (f"http://{req.header('host')}",
                                                 f"https://{req.header('host')}"):
            raise HttpError(403, "cross-origin requests are refused")
        self._authorize(req)

    # --------------------------------------------------------------- reads
    async def _open_get(self, path: str) -> Response:
        if path == "/api/openapi.json":
            return Response.json(document())
        return Response.json({
            "version": __version__,
            "broker": self.broker,
            "queues": list(self.queues),
            "pools": [p.pool.name for p in self.pools],
            "token_required": self.token is not None,
            "tasks": self.results is not None,
            "schedules": self.schedules is not None and not self.schedules.empty,
        })

    async def _get(self, req: Request) -> Response:
        path, q = req.path, req.query
        if path == "/api/queues":
            minutes = _number(q, "minutes", 10.0, 0.0, 60.0)
            since = time.time() - minutes * 60
            # Counts at most a second old; the sampler fills the history.
            await asyncio.gather(*(s.refresh(FRESH) for s in self.queues.values()))
            return Response.json({"queues": [s.view(since) for s in self.queues.values()]})
        if path == "/api/pools":
            return Response.json({"pools": [p.view() for p in self.pools]})
        if path == "/api/schedules":
            if self.schedules is None:
                return Response.json({"schedules": [], "errors": []})
            return Response.json(await self.schedules.view())
        if path == "/api/dead-letters":
            return await self._dead_letters(q)
        if path == "/api/dead-letter":
            source = self._queue(q.get("queue"))
            wanted = q.get("id") or ""
            records, _ = await source.dead_letters()
            for d, _summary in records:
                if d.original_id == wanted:
                    return Response.json(dead_letter_detail(source.name, d))
            return Response.error(404, "no dead letter with this id in this queue")
        if path.startswith("/api/tasks/"):
            return await self._task(path[len("/api/tasks/"):])
        return Response.error(404, "not found")

    async def _dead_letters(self, q: dict[str, str]) -> Response:
        names = [q["queue"]] if q.get("queue") else list(self.queues)
        error_type = q.get("error_type") or None
        since = _number(q, "since", None, 0.0, None)
        until = _number(q, "until", None, 0.0, None)
        offset = int(_number(q, "offset", 0, 0, None) or 0)
        limit = int(_number(q, "limit", 50, 1, MAX_PAGE) or 50)
        rows: list[dict[str, Any]] = []
        types: set[str] = set()
        truncated = False
        sources = [self._queue(name) for name in names]
        read = await asyncio.gather(*(s.dead_letters() for s in sources))
        for records, cut in read:
            truncated = truncated or cut
            for _, d in records:
                types.add(d["error_type"])
                if error_type is not None and d["error_type"] != error_type:
                    continue
                if since is not None and d["failed_at"] < since:
                    continue
                if until is not None and d["failed_at"] > until:
                    continue
                rows.append(d)
        page = rows[offset:offset + limit]
        return Response.json({
            "total": len(rows), "offset": offset, "limit": limit, "truncated": truncated,
            "error_types": sorted(types),
            "items": page,
        })

    async def _task(self, task_id: str) -> Response:
        if self.results is None:
            return Response.error(404, "no result store: start the dashboard with --app")
        if not task_id or len(task_id) > 200:
            raise HttpError(400, "task id: 1 to 200 characters")
        record = await task_record(self.results, task_id)
        if record is None:
            return Response.json({"id": task_id, "status": "unknown", "attempts": None,
                                  "result": None, "error": None})
        error = record.get("error")
        return Response.json({
            "id": task_id, "status": record.get("status"),
            "attempts": error.get("attempts") if isinstance(error, dict) else None,
            "result": record.get("value"),
            "error": None if not isinstance(error, dict) else {
                "type": error.get("type"), "message": scrub(str(error.get("message", "")))},
        })

    def _queue(self, name: str | None) -> QueueSource:
        source = self.queues.get(name or "")
        if source is None:
            raise HttpError(404, "unknown queue")
        return source

    # ------------------------------------------------------------- changes
    async def _post(self, req: Request) -> Response:
        try:
            data = req.json()
        except ValueError:
            raise HttpError(400, "the body is not JSON") from None
        if not isinstance(data, dict):
            raise HttpError(400, "the body must be a JSON object")
        source = self._queue(data.get("queue"))
        if source.dlq is None:
            raise HttpError(404, "this queue has no dead-letter queue")
        if req.path == "/api/dead-letters/replay":
            ids = data.get("ids")
            if ids is not None and (not isinstance(ids, list) or len(ids) > MAX_IDS
                                    or not all(isinstance(i, str) for i in ids)):
                raise HttpError(400, f"ids: a list of at most {MAX_IDS} message ids, or null")
            if ids == []:
                return Response.json({"replayed": 0})
            async with source.lock:
                try:
                    # The code `foxtive dlq replay` runs: in place for a
                    # native DLQ (nothing lost or doubled), else to the
                    # backend the pool last ran with.
                    n = await source.dlq.replay(ids=ids)
                except Exception as e:
                    raise HttpError(502, scrub(f"replay failed: {type(e).__name__}: {e}")) from e
                finally:
                    source.forget_dead_letters()
                    _logs.pump()
            await source.sample()
            return Response.json({"replayed": n})
        if req.path == "/api/dead-letters/purge":
            if data.get("confirm") != source.name:
                raise HttpError(409, "purge: confirm by sending \"confirm\": the queue's name")
            async with source.lock:
                try:
                    n = await source.dlq.purge()
                except Exception as e:
                    raise HttpError(502, scrub(f"purge failed: {type(e).__name__}: {e}")) from e
                finally:
                    source.forget_dead_letters()
            await source.sample()
            return Response.json({"purged": n})
        return Response.error(404, "not found")


def _number(q: dict[str, str], name: str, default: Any, low: float | None,
            high: float | None) -> Any:
    raw = q.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise HttpError(400, f"{name}: expected a number") from None
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        raise HttpError(400, f"{name}: out of range")
    return value
