"""Issue 11, items 7, 8 and 9a: Redis URL credentials never shown, a start
limit for `foxtive run --processes N`, and `--log-level` checked.

The Redis servers here are this file's own (a unix socket and a TCP port, both
with ``requirepass``), started and shut down by the fixtures: never the shared
one, so killing them to provoke a reconnect touches nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import foxtive
from foxtive import cli

SECRET = "s3cr3t-Pw-" + uuid.uuid4().hex[:8]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A private redis-server (daemonized); ``stop()`` kills it."""

    def __init__(self, tmp: Path, *, unix: bool) -> None:
        self.dir = tmp
        self.sock = str(tmp / "r.sock")
        self.port = 0 if unix else _free_port()
        pidfile = tmp / "redis.pid"
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--requirepass", SECRET, "--save", "", "--appendonly", "no",
                "--daemonize", "yes", "--pidfile", str(pidfile), "--dir", str(tmp),
                "--logfile", str(tmp / "redis.log")]
        if unix:
            args += ["--unixsocket", self.sock, "--unixsocketperm", "700"]
        subprocess.run(args, check=True, timeout=30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if self.client().ping():
                    break
            time.sleep(0.05)
        else:
            raise RuntimeError("own redis-server did not start")
        self.pid = int(pidfile.read_text().strip())

    def client(self) -> redis.Redis:
        if self.port == 0:
            return redis.Redis(unix_socket_path=self.sock, password=SECRET)
        return redis.Redis(host="127.0.0.1", port=self.port, password=SECRET)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{self.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def unix_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path_factory.mktemp("redis-unix"), unix=True)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def tcp_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path_factory.mktemp("redis-tcp"), unix=False)
    try:
        yield server
    finally:
        server.stop()


def _urls(unix: OwnRedis, tcp: OwnRedis) -> list[str]:
    return [
        f"unix://{unix.sock}?pass={SECRET}",
        f"unix://{unix.sock}?password={SECRET}&db=0",
        f"redis+unix://{unix.sock}?db=0&pass={SECRET}",
        f"redis://127.0.0.1:{tcp.port}/0?password={SECRET}",
        f"redis://:{SECRET}@127.0.0.1:{tcp.port}/0",
        f"redis://default:{SECRET}@127.0.0.1:{tcp.port}/0",
    ]


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@contextlib.contextmanager
def _debug_logs() -> Iterator[_Capture]:
    """Everything the "foxtive" logger (Rust tracing bridge included) says at DEBUG."""
    handler = _Capture()
    logger = logging.getLogger("foxtive")
    old = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old)


# --------------------------------------------------------------- item 7
def test_every_credential_form_authenticates_and_is_never_shown(
        unix_redis: OwnRedis, tcp_redis: OwnRedis) -> None:
    for url in _urls(unix_redis, tcp_redis):
        stream = f"ops7:{uuid.uuid4().hex[:10]}"
        dlq_key = f"ops7-dlq:{uuid.uuid4().hex[:10]}"
        server = unix_redis if url.startswith(("unix", "redis+unix")) else tcp_redis
        server.client().xadd(stream, {"body": b"hello"})
        seen: list[str] = []

        def handle(message: Any, seen: list[str] = seen) -> None:
            seen.append(message.id)
            raise foxtive.PermanentError("failed on purpose")

        backend = foxtive.RedisStreamBackend(
            url, foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="g"))
        dlq = foxtive.RedisDLQ(url, dlq_key)
        limit = foxtive.RateLimitMiddleware(per_second=1000, burst=10, redis_url=url,
                                            key=f"ops7-rate:{uuid.uuid4().hex[:8]}")
        pool = (foxtive.WorkerPoolBuilder("ops7").add_worker(handle, id="w")
                .with_middleware(foxtive.RetryHandler(max_retries=0, dead_letter_queue=dlq))
                .with_middleware(limit).build())
        with _debug_logs() as logs:
            assert pool.run_until_idle(backend, timeout=30), url
        assert len(seen) == 1, url  # it authenticated: the message was read
        entries = dlq.get_failed_messages(limit=10)
        assert len(entries) == 1, url
        shown = [repr(backend), repr(dlq), repr(limit), str(backend.url), dlq.url,
                 pool.metrics_text(), repr(pool.stats()), *logs.lines,
                 *(repr(e) + e.error_message + repr(e.headers) for e in entries)]
        for text in shown:
            assert SECRET not in text, (url, text)
        assert "***" in repr(backend) and "***" in repr(dlq) and "***" in repr(limit), url
        server.client().delete(stream, f"{stream}:dlq", f"{stream}:delayed", dlq_key)


def test_bad_password_errors_do_not_show_it(unix_redis: OwnRedis, tcp_redis: OwnRedis) -> None:
    wrong = "wr0ng-" + SECRET
    for url in (f"unix://{unix_redis.sock}?pass={wrong}",
                f"redis://127.0.0.1:{tcp_redis.port}/0?password={wrong}"):
        dlq = foxtive.RedisDLQ(url, "ops7-bad")
        with pytest.raises(Exception) as info:
            len(dlq)
        text = f"{info.value!r} {info.value}"
        assert wrong not in text and SECRET not in text, text
        # Conflicting passwords are a ConfigError that shows neither.
        with pytest.raises(foxtive.ConfigError) as conflict:
            foxtive.RedisStreamBackend(
                f"redis://:{wrong}@127.0.0.1:{tcp_redis.port}/0?password={SECRET}")
        assert wrong not in str(conflict.value) and SECRET not in str(conflict.value)


def test_reconnect_warning_hides_a_query_password(tcp_redis: OwnRedis) -> None:
    url = f"redis://127.0.0.1:{tcp_redis.port}/0?password={SECRET}"
    stream = f"ops7r:{uuid.uuid4().hex[:10]}"
    backend = foxtive.RedisStreamBackend(
        url, foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="g"))
    pool = (foxtive.WorkerPoolBuilder("ops7r").add_worker(lambda m: None, id="w")
            .with_shutdown_timeout(5).build())
    warned = threading.Event()

    class Watch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "Redis connection failed" in record.getMessage():
                warned.set()

    watch = Watch()
    logging.getLogger("foxtive").addHandler(watch)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(pool.run_async(backend, handle_signals=False))
        except Exception as e:  # a run that ends while Redis is gone may raise:
            errors.append(e)  # its text is checked below like the logs

    with _debug_logs() as logs:
        thread = threading.Thread(target=run)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while backend.state != "connected" or pool.stats()["state"] != "running":
                assert time.monotonic() < deadline, "never connected"
                time.sleep(0.05)
            tcp_redis.stop()  # our own server: the link dies
            assert warned.wait(60), "no reconnect warning"
        finally:
            pool.shutdown()
            thread.join(60)
            logging.getLogger("foxtive").removeHandler(watch)
    warnings = [line for line in logs.lines if "Redis connection failed" in line]
    assert warnings
    for line in [*logs.lines, *(f"{e!r} {e}" for e in errors)]:
        assert SECRET not in line, line
    assert any("password=***" in line for line in warnings), warnings


def test_cli_output_hides_a_query_password(unix_redis: OwnRedis) -> None:
    url = f"unix://{unix_redis.sock}?pass={SECRET}"
    key = f"ops7-cli:{uuid.uuid4().hex[:8]}"

    def fail(message: Any) -> None:
        raise foxtive.PermanentError("failed on purpose")

    memory = foxtive.MemoryBackend("ops7-cli")
    memory.publish_sync(b"x")
    pool = (foxtive.WorkerPoolBuilder("ops7-cli").add_worker(fail, id="w")
            .with_middleware(foxtive.RetryHandler(max_retries=0,
                                                  dead_letter_queue=foxtive.RedisDLQ(url, key)))
            .build())
    assert pool.run_until_idle(memory, timeout=30)

    def cli(key: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "foxtive", "--log-level", "DEBUG", "dlq",
                               "list", "--redis", url, "--key", key],
                              capture_output=True, text=True, timeout=60)

    out = cli(key)
    assert out.returncode == 0, out.stderr
    assert "1 dead letter(s)" in out.stdout and "pass=***" in out.stdout, out.stdout
    assert SECRET not in out.stdout + out.stderr
    missing = cli(key + "-missing")  # the error names the store, password hidden
    assert missing.returncode == 2 and "pass=***" in missing.stderr, missing.stderr
    assert SECRET not in missing.stdout + missing.stderr
    unix_redis.client().delete(key)


# --------------------------------------------------------------- item 8
def _pythonpath(app_dir: Path) -> str:
    return os.pathsep.join(p for p in (str(app_dir), os.environ.get("PYTHONPATH")) if p)


APP = textwrap.dedent(
    """
    import os, threading, time
    import foxtive

    def crash_once_running(pool, backend):
        while backend.state != "connected" or pool.stats()["state"] != "running":
            time.sleep(0.05)
        time.sleep(0.5)
        os._exit(78)  # a crash after start-up, with the start-up failure's code

    def make_pool():
        backend = foxtive.RedisStreamBackend(
            os.environ["APP_URL"],
            foxtive.RedisStreamConsumerConfig(stream_name=os.environ["STREAM"], group_name="g"))
        pool = (foxtive.WorkerPoolBuilder("ops8").add_worker(lambda m: None, id="w")
                .with_backend(backend).build())
        if os.environ.get("CRASH_AFTER_START"):
            threading.Thread(target=crash_once_running, args=(pool, backend),
                             daemon=True).start()
        return pool
    """
)


def test_processes_stop_after_repeated_auth_failures_at_start_up(
        tmp_path: Path, tcp_redis: OwnRedis) -> None:
    wrong = "wr0ng-" + SECRET
    (tmp_path / "ops8_app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": _pythonpath(tmp_path),
           "STREAM": f"ops8:{uuid.uuid4().hex[:8]}",
           "APP_URL": f"redis://127.0.0.1:{tcp_redis.port}/0?password={wrong}"}
    t0 = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-m", "foxtive", "run", "ops8_app:make_pool",
                              "--processes", "2"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"still restarting after {time.monotonic() - t0:.0f} s") from e
    assert out.returncode == 78, out.stderr[-2000:]
    assert time.monotonic() - t0 < 90
    last = out.stderr.strip().splitlines()[-1]
    assert "giving up" in last, last
    assert re.search(r"authentication ?failed|WRONGPASS|invalid username-password", last,
                     re.IGNORECASE), last
    assert wrong not in out.stderr + out.stdout and SECRET not in out.stderr + out.stdout


@pytest.mark.timeout(240)
def test_processes_keep_restarting_a_child_that_crashes_after_start_up(
        tmp_path: Path, tcp_redis: OwnRedis) -> None:
    stream = f"ops8c:{uuid.uuid4().hex[:8]}"
    (tmp_path / "ops8_app.py").write_text(APP)
    env = {**os.environ, "PYTHONPATH": _pythonpath(tmp_path), "STREAM": stream,
           "CRASH_AFTER_START": "1",
           "APP_URL": f"redis://127.0.0.1:{tcp_redis.port}/0?password={SECRET}"}
    parent = subprocess.Popen([sys.executable, "-m", "foxtive", "run", "ops8_app:make_pool",
                               "--processes", "2", "--shutdown-timeout", "2"],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    starts: dict[int, int] = {}
    try:
        assert parent.stdout is not None
        # START_LIMIT + 1 starts of one child: more exits (code 78) than the limit.
        while max(starts.values(), default=0) < 6:
            line = parent.stdout.readline()
            assert line, f"the parent stopped (exit {parent.wait()}) after {starts}"
            m = re.match(r"foxtive: child (\d) started", line)
            if m:
                starts[int(m.group(1))] = starts.get(int(m.group(1)), 0) + 1
        assert parent.poll() is None
    finally:
        parent.send_signal(signal.SIGTERM)
        try:
            parent.wait(timeout=60)
        except subprocess.TimeoutExpired:
            parent.kill()


# --------------------------------------------------------------- item 9a
@pytest.mark.parametrize("argv", [["--log-level", "BOGUS", "demo"],
                                  ["run", "x:y", "--log-level", "verbose"]])
def test_a_bogus_log_level_is_rejected(argv: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.build_parser().parse_args(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--log-level" in err and "invalid choice" in err, err
    for level in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        assert level in err, err


def test_log_levels_are_case_insensitive() -> None:
    args = cli.build_parser().parse_args(["--log-level", "debug", "run", "x:y",
                                          "--log-level", "Warning"])
    assert args.log_level == "WARNING"


def test_a_bogus_log_level_in_the_environment_is_rejected() -> None:
    out = subprocess.run([sys.executable, "-m", "foxtive", "demo", "--messages", "1"],
                         env={**os.environ, "FOXTIVE_LOG_LEVEL": "loud"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "FOXTIVE_LOG_LEVEL" in out.stderr, out.stderr
