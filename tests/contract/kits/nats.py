"""NATS JetStream on 127.0.0.1:4222 (or FOXTIVE_NATS_URL); judged by nats-py.

Each kit's subject is its queue; its streams (the queue's, ``_DLQ`` and
``_DELAYED``) are deleted by ``cleanup()``. The backend of the test process
connects through a TCP proxy of the kit's own, so ``drop_connections`` cuts
foxtive's connections without touching the shared server; worker
subprocesses connect directly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import foxtive

from ..kit import CROSS_PROCESS, DROP_CONNECTION, BackendKit, DeadRecord

NATS_URL = os.environ.get("FOXTIVE_NATS_URL", "nats://127.0.0.1:4222")
_HOST, _PORT = NATS_URL.rsplit("/", 1)[-1].rsplit("@", 1)[-1].split(":")
#: A short ack_wait: a SIGKILLed worker's messages come back within seconds
#: (held ones are kept alive by foxtive's in-progress heartbeat).
ACK_WAIT = 2.0

T = TypeVar("T")


def stream_for(subject: str) -> str:
    return "".join(c.upper() if c.isascii() and c.isalnum() else "_" for c in subject)


def judge(fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(jetstream_context)`` on a fresh nats-py connection."""
    import nats

    async def go() -> T:
        nc = await nats.connect(NATS_URL, connect_timeout=5, allow_reconnect=False,
                                name="foxtive-judge")
        try:
            return await fn(nc.jetstream())
        finally:
            await nc.close()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(go())
    # Called from a running loop (an async test): its own loop, in a thread.
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, go()).result()


async def stream_messages(js: Any, stream: str) -> int:
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return 0
    return int(info.state.messages)


async def read_stream(js: Any, stream: str) -> list[Any]:
    """Every message of ``stream``, oldest first (direct gets, nothing consumed)."""
    from nats.js.errors import NotFoundError

    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return []
    out = []
    if info.state.messages == 0:
        return out
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            out.append(await js.get_msg(stream, seq))
        except NotFoundError:
            continue
    return out


def dead_record(msg: Any) -> DeadRecord:
    h = dict(msg.headers or {})
    attempts = h.get("x-foxtive-attempts")
    return DeadRecord(body=bytes(msg.data or b""),
                      message_id=h.get("x-foxtive-message-id") or h.get("Nats-Msg-Id"),
                      error_type=h.get("x-foxtive-error-type"),
                      attempts=None if attempts is None else int(attempts),
                      source_queue=h.get("x-foxtive-source-queue"), raw=h)


def nats_answers() -> str | None:
    try:
        with socket.create_connection((_HOST, int(_PORT)), timeout=2):
            pass
    except OSError as e:
        return f"no NATS at {NATS_URL}: {e}"
    try:
        import nats  # noqa: F401
    except ImportError:
        return "nats-py is not installed (./scripts/setup installs it)"
    return None


class TcpProxy:
    """Forwards 127.0.0.1:<port> to the NATS server, in threads; ``cut()``
    closes every connection it carries (the server stays up); ``down()``
    also refuses new ones until ``up()``."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.refusing = False
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.refusing:
                client.close()
                continue
            try:
                upstream = socket.create_connection((_HOST, int(_PORT)), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> int:
        with self.lock:
            pairs, self.pairs = self.pairs, []
        for pair in pairs:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
        return len(pairs)

    def down(self) -> None:
        self.refusing = True
        self.cut()

    def up(self) -> None:
        self.refusing = False

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut()


class NatsKit(BackendKit):
    name = "nats"
    capabilities = frozenset({CROSS_PROCESS, DROP_CONNECTION})

    def __init__(self, queue: str | None = None) -> None:
        super().__init__(queue)
        self.stream = stream_for(self.queue)
        self._proxy: TcpProxy | None = None

    def available(self) -> str | None:
        return nats_answers()

    def config(self) -> foxtive.NatsConsumerConfig:
        return foxtive.NatsConsumerConfig(subject=self.queue, ack_wait=ACK_WAIT)

    def backend(self) -> foxtive.NatsBackend:
        if self._proxy is None:
            self._proxy = TcpProxy()
        return foxtive.NatsBackend(f"nats://127.0.0.1:{self._proxy.port}", self.config())

    def worker_backend(self) -> foxtive.NatsBackend:
        return foxtive.NatsBackend(NATS_URL, self.config())

    def waiting(self) -> int:
        # WorkQueue streams: a message leaves when acked (or TERMed), so what
        # is stored is ready, delivered and unsettled, or NAKed for a retry.
        async def count(js: Any) -> int:
            return (await stream_messages(js, self.stream)
                    + await stream_messages(js, f"{self.stream}_DELAYED"))

        return judge(count)

    def dead_letters(self) -> list[DeadRecord]:
        async def read(js: Any) -> list[Any]:
            return await read_stream(js, f"{self.stream}_DLQ")

        return [dead_record(m) for m in judge(read)]

    def drop_connections(self, pid: int) -> int:
        assert pid == os.getpid(), "only the test process's backend goes through the proxy"
        return self._proxy.cut() if self._proxy is not None else 0

    def cleanup(self) -> None:
        if self._proxy is not None:
            self._proxy.close()
        from nats.js.errors import NotFoundError

        async def delete(js: Any) -> None:
            for name in (self.stream, f"{self.stream}_DLQ", f"{self.stream}_DELAYED"):
                with contextlib.suppress(NotFoundError):
                    await js.delete_stream(name)

        judge(delete)
