"""Helpers for the Redis Streams tests: unique keys, the Redis server, and a
worker process for the kill / terminate tests.

Run as a script it is that worker process: it consumes a stream and prints
one line per finished message to stdout (flushed at once, so a line is in
the pipe before the message is acknowledged).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import redis

REDIS_URL = os.environ.get("FOXTIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
#: How the development and CI machines run Redis (see issue #4 / .ci/run).
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379",
               "--save", "", "--appendonly", "no"]


def unique_stream(prefix: str) -> str:
    return f"foxtive-test:{prefix}:{uuid.uuid4().hex[:12]}"


def delete_keys(client: Any, stream: str) -> None:
    client.delete(stream, f"{stream}:dlq", f"{stream}:delayed")


def redis_answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:
        return False


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    """Poll ``predicate`` (state in another process or in Redis) until true."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def restart_redis(client: Any) -> None:
    """Stop the local server and start it again exactly as CI does.

    Data is lost (no persistence): that is what a restarted cache-style
    Redis looks like to a worker."""
    with contextlib.suppress(Exception):
        client.shutdown(nosave=True)
    wait_for(lambda: not redis_answers(client), 10, "Redis to stop")
    ensure_redis(client)


def ensure_redis(client: Any) -> None:
    if redis_answers(client):
        return
    subprocess.run(REDIS_START, check=True, capture_output=True)
    wait_for(lambda: redis_answers(client), 10, "Redis to start")


class Lines:
    """Collect a subprocess's stdout lines in a thread; wait for counts."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_count(self, n: int, prefix: str = "", timeout: float = 30.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: sum(1 for x in self.lines if x.startswith(prefix)) >= n
                or not self._thread.is_alive(),
                timeout,
            )
            got = sum(1 for x in self.lines if x.startswith(prefix))
        assert ok and got >= n, f"expected {n} {prefix!r} lines, got {got}: {self.lines[-5:]}"

    def finish(self) -> list[str]:
        self._thread.join(timeout=30)
        return list(self.lines)

    def done(self, prefix: str = "done ") -> list[str]:
        return [x[len(prefix):] for x in self.lines if x.startswith(prefix)]


def spawn_worker(stream: str, *args: str) -> tuple[subprocess.Popen[str], Lines]:
    cmd = [sys.executable, __file__, "--stream", stream, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, Lines(proc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PrivateRedis:
    """A throw-away redis-server on a free port (for settings the shared
    server must not get: a password, ACL users)."""

    def __init__(self, workdir: str, *args: str) -> None:
        self.dir = workdir
        self.port = free_port()
        self.args = args

    def start(self) -> bool:
        if shutil.which("redis-server") is None:
            return False
        subprocess.run(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "yes",
             "--pidfile", os.path.join(self.dir, "private.pid"), *self.args],
            check=True, capture_output=True,
        )

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return True
            return False

        wait_for(answers, 10, "the private Redis to listen")
        return True

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError), open(
            os.path.join(self.dir, "private.pid")
        ) as f:
            os.kill(int(f.read().strip()), signal.SIGTERM)


class TlsRedis:
    """A throw-away TLS Redis on a free port, with its own CA."""

    def __init__(self, workdir: str) -> None:
        self.dir = workdir
        self.port = 0
        self.ca = os.path.join(workdir, "ca.pem")

    def start(self) -> bool:
        if shutil.which("openssl") is None or shutil.which("redis-server") is None:
            return False
        d = self.dir

        def run(*cmd: str) -> None:
            subprocess.run(cmd, check=True, capture_output=True, cwd=d)

        run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=foxtive-test-ca")
        run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key",
            "-out", "server.csr", "-subj", "/CN=localhost")
        with open(os.path.join(d, "ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost")
        run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext")
        self.port = free_port()
        try:
            run("redis-server", "--port", "0", "--tls-port", str(self.port),
                "--tls-cert-file", "server.pem", "--tls-key-file", "server.key",
                "--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no",
                "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--daemonize", "yes", "--pidfile", os.path.join(d, "redis.pid"))
        except subprocess.CalledProcessError:
            return False

        def answers() -> bool:
            with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=0.2
            ):
                return True
            return False

        wait_for(answers, 10, "the TLS Redis to listen")
        return True

    def stop(self) -> None:
        pidfile = os.path.join(self.dir, "redis.pid")
        with contextlib.suppress(OSError, ValueError):
            with open(pidfile) as f:
                os.kill(int(f.read().strip()), signal.SIGTERM)


@contextlib.contextmanager
def running_pool(pool: Any, backend: Any) -> Iterator[threading.Thread]:
    """Run ``pool`` over ``backend`` in a thread with its own event loop;
    shut it down gracefully on exit."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(pool.run_async(backend, handle_signals=False))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        pool.shutdown()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the pool did not stop"
        if errors:
            raise errors[0]


# ---------------------------------------------------------------- worker


def _worker(args: argparse.Namespace) -> None:
    import foxtive

    def say(line: str) -> None:
        os.write(1, (line + "\n").encode())

    async def handler(message: foxtive.Message) -> None:
        body = message.body.decode(errors="replace")
        say(f"start {body} {message.attempt}")
        if args.mode == "hang":
            await asyncio.sleep(3600)
        if args.mode == "kill-on-bad" and body == "bad":
            os.kill(os.getpid(), signal.SIGKILL)
        if args.delay:
            await asyncio.sleep(args.delay)
        say(f"done {body}")

    config = foxtive.RedisStreamConsumerConfig(
        stream_name=args.stream,
        group_name=args.group,
        consumer_name=args.consumer,
        batch_size=args.batch_size,
        claim_idle=args.claim_idle,
        max_deliveries=args.max_deliveries,
        block_ms=200,
    )
    backend = foxtive.RedisStreamBackend(args.url, config)
    pool = (
        foxtive.WorkerPoolBuilder("test-worker")
        .add_worker(handler, id="h")
        .with_concurrency_limit(args.concurrency)
        .with_shutdown_timeout(args.shutdown_timeout)
        .build()
    )
    say("ready")
    if args.until_idle:
        idle = pool.run_until_idle(backend, timeout=60)
        say(f"idle {idle}")
    else:
        pool.run(backend)
        say("stopped")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default=REDIS_URL)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--group", default="g")
    ap.add_argument("--consumer", default=None)
    ap.add_argument("--mode", choices=["sleep", "hang", "kill-on-bad"], default="sleep")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--claim-idle", type=float, default=60.0)
    ap.add_argument("--max-deliveries", type=int, default=10)
    ap.add_argument("--shutdown-timeout", type=float, default=10.0)
    ap.add_argument("--until-idle", action="store_true")
    _worker(ap.parse_args())


def own_ports() -> set[int]:
    """The local TCP ports of this process's sockets (Linux: /proc): what
    Redis sees as their ``addr``, so other processes' clients (other
    tests running on the same Redis) are not counted."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def own_clients(client: redis.Redis,
                named: str | None = "foxtive-sender") -> list[dict[str, Any]]:
    """This process's connections as Redis lists them (the loops' own:
    named ``foxtive-sender``; ``named=None``: all)."""
    ports = own_ports()
    return [c for c in client.client_list()
            if (named is None or c.get("name") == named)
            and int(c["addr"].rsplit(":", 1)[1]) in ports]


def status_in(client: redis.Redis, task_id: str) -> str | None:
    """The status of a task's result record, as redis-py reads it (None: no record)."""
    raw = client.get(f"foxtive:result:{task_id}")
    return None if raw is None else str(json.loads(raw)["status"])


if __name__ == "__main__":
    main()
