"""A small HTTP/1.1 server on asyncio streams, with the dashboard's limits.

Only what the dashboard needs: GET, HEAD and POST, persistent connections,
bounded heads and bodies, a per-client request rate, and security headers
on every response. No CORS headers are ever sent, so other origins can
neither read the API nor send it JSON.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

#: Most bytes of a request line plus headers.
MAX_HEAD = 16 * 1024
#: Most bytes of a request body.
MAX_BODY = 64 * 1024
#: Most header lines.
MAX_HEADERS = 100
#: How long a client may take to send a request (and how long an idle
#: persistent connection stays open).
READ_TIMEOUT = 10.0
#: Connections served at once; more wait in the listen backlog.
MAX_CONNECTIONS = 64

REASONS = {200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
           401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
           415: "Unsupported Media Type", 421: "Misdirected Request",
           429: "Too Many Requests", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}

SECURITY_HEADERS = (
    ("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "img-src 'self' data:; connect-src 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Cross-Origin-Resource-Policy", "same-origin"),
    ("Cross-Origin-Opener-Policy", "same-origin"),
)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    client: str

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self) -> Any:
        if not self.body:
            return {}
        return json.loads(self.body)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        return cls(status, json.dumps(value, separators=(",", ":")).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"error": message}, status)


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RateLimiter:
    """A token bucket per client address: ``rate`` requests a second on
    average, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, client: str) -> bool:
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return False
        self._buckets[client] = (tokens - 1.0, now)
        if len(self._buckets) > 10_000:  # forget idle clients
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return True


Handler = Callable[[Request], Awaitable[Response]]


class HttpServer:
    def __init__(self, handler: Handler, limiter: RateLimiter) -> None:
        self.handler = handler
        self.limiter = limiter
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._server: asyncio.Server | None = None
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._serve, host, port,
                                                  limit=MAX_HEAD + 1)
        addr = self._server.sockets[0].getsockname()
        return str(addr[0]), int(addr[1])

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            # Idle keep-alive connections end now, not at their timeout.
            for writer in list(self._open):
                writer.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else "?"
        self._open.add(writer)
        async with self._slots:
            try:
                while True:
                    try:
                        request = await asyncio.wait_for(self._read(reader, client),
                                                         READ_TIMEOUT)
                    except HttpError as e:
                        await self._write(writer, Response.error(e.status, e.message), False,
                                          "GET")
                        return
                    if request is None:
                        return
                    keep = (request.header("connection") or "").lower() != "close"
                    if not self.limiter.allow(client):
                        response = Response.error(429, "too many requests")
                        response.headers.append(("Retry-After", "1"))
                    else:
                        try:
                            response = await self.handler(request)
                        except HttpError as e:
                            response = Response.error(e.status, e.message)
                    await self._write(writer, response, keep, request.method)
                    if not keep:
                        return
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
                return
            except asyncio.CancelledError:  # the server's loop is shutting down
                return
            finally:
                self._open.discard(writer)
                writer.close()

    async def _read(self, reader: asyncio.StreamReader, client: str) -> Request | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial.strip():
                return None
            raise HttpError(400, "incomplete request") from None
        except asyncio.LimitOverrunError:
            raise HttpError(431, f"request head over {MAX_HEAD} bytes") from None
        if len(head) > MAX_HEAD:
            raise HttpError(431, f"request head over {MAX_HEAD} bytes")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "bad request line")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise HttpError(400, "bad header line")
            headers[name.strip().lower()] = value.strip()
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, "too many headers")
        if "transfer-encoding" in headers:
            raise HttpError(400, "chunked bodies are not accepted; send Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "bad Content-Length")
        if length > MAX_BODY:
            raise HttpError(413, f"request body over {MAX_BODY} bytes")
        body = await reader.readexactly(length) if length else b""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        return Request(method, unquote(url.path), query, headers, body, client)

    async def _write(self, writer: asyncio.StreamWriter, response: Response, keep: bool,
                     method: str) -> None:
        reason = REASONS.get(response.status, "Error")
        lines = [f"HTTP/1.1 {response.status} {reason}",
                 f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(response.body)}",
                 f"Connection: {'keep-alive' if keep else 'close'}"]
        lines += [f"{k}: {v}" for k, v in SECURITY_HEADERS]
        lines += [f"{k}: {v}" for k, v in response.headers]
        if not any(k.lower() == "cache-control" for k, _ in response.headers):
            lines.append("Cache-Control: no-store")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if method != "HEAD":
            data += response.body
        writer.write(data)
        await writer.drain()
