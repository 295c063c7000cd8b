"""`foxtive run --processes N`: N fresh interpreters, supervised.

The parent is plain Python: it never starts foxtive's runtime (tokio does not
survive ``fork``), it only spawns children with ``python -m foxtive run``,
restarts one that dies with backoff, and on SIGTERM/SIGINT forwards SIGTERM to
every child and waits for them to drain.

Start limit (like systemd's ``StartLimitBurst``): a child that cannot start
because of a configuration or authentication error (a wrong password, an
unknown vhost, a bad setting, a target that does not import) exits with
:data:`EX_CONFIG` (78) *before* its backend ever connected. Restarting it
cannot help, so when one child does that :data:`START_LIMIT` times in a row
within :data:`START_LIMIT_WINDOW` seconds, the parent stops every child and
exits 78, its last line on stderr naming the error. Any other exit (a crash,
a kill, exit 1 after running) is restarted with backoff, forever, as before.
The child also passes its error text to the parent through a pipe whose
descriptor is in ``FOXTIVE_STATUS_FD``, so the parent can quote it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

from .errors import ConfigError

log = logging.getLogger("foxtive")

#: Exit code of a child that could not start: configuration or authentication.
EX_CONFIG = 78
#: That many start-up failures of one child in a row, within the window, stop all.
START_LIMIT, START_LIMIT_WINDOW = 5, 60.0

#: Restart delays for a child that died: 1 s, doubling, at most 30 s; reset
#: once a child has lived this long.
_BACKOFF_START, _BACKOFF_MAX, _HEALTHY_AFTER = 1.0, 30.0, 60.0


class _Child:
    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.restarts = 0
        self.backoff = _BACKOFF_START
        self.next_start = 0.0
        #: Times of this child's consecutive start-up (exit 78) failures.
        self.startup_failures: list[float] = []
        self.status_fd: int | None = None
        self.last_error = ""

    def read_status(self) -> str:
        """The start-up error the (exited) child left in its status pipe, or ""."""
        if self.status_fd is None:
            return ""
        chunks = []
        try:  # non-blocking: a grandchild may still hold the write end
            while chunk := os.read(self.status_fd, 65536):
                chunks.append(chunk)
        except OSError:  # BlockingIOError included: what was written is read
            pass
        finally:
            os.close(self.status_fd)
            self.status_fd = None
        text = b"".join(chunks).decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else ""

    def start_limit_hit(self, code: int | None, error: str, now: float) -> bool:
        """Count a start-up failure; True once the limit is reached.

        Only exit 78 *with* an error in the status pipe counts: the child's
        guard writes it only before the backend ever connected, so a handler
        that exits 78 later is an ordinary crash."""
        if code != EX_CONFIG or not error:
            self.startup_failures.clear()
            return False
        self.last_error = error
        self.startup_failures = [t for t in self.startup_failures
                                 if now - t <= START_LIMIT_WINDOW] + [now]
        return len(self.startup_failures) >= START_LIMIT


def run_processes(target: str, processes: int, child_args: Sequence[str],
                  shutdown_timeout: float, health_port: int | None) -> int:
    """Run ``processes`` children until a signal; returns the exit code."""
    stop = threading.Event()
    signals: list[int] = []

    def on_signal(sig: int, _frame: object) -> None:
        signals.append(sig)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    children = [_Child(i) for i in range(processes)]

    def spawn(child: _Child) -> None:
        args = [sys.executable, "-m", "foxtive", "run", target, "--processes", "1",
                *child_args]
        if health_port is not None:
            args += ["--health-port", str(health_port + child.index)]
        read_fd, write_fd = os.pipe()
        env = {**os.environ, "FOXTIVE_CHILD_INDEX": str(child.index),
               "FOXTIVE_STATUS_FD": str(write_fd)}
        try:
            child.proc = subprocess.Popen(args, env=env, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        os.set_blocking(read_fd, False)
        child.status_fd = read_fd
        child.started = time.monotonic()
        print(f"foxtive: child {child.index} started (pid {child.proc.pid})", flush=True)

    for child in children:
        spawn(child)
    gave_up: _Child | None = None
    while not stop.is_set():
        now = time.monotonic()
        for child in children:
            proc = child.proc
            if proc is not None and proc.poll() is not None:
                if child.start_limit_hit(proc.returncode, child.read_status(), now):
                    child.proc, gave_up = None, child
                    stop.set()
                    break
                lived = now - child.started
                if lived > _HEALTHY_AFTER:
                    child.backoff = _BACKOFF_START
                log.error("child %d (pid %d) exited with %s after %.1f s; restarting in %.1f s",
                          child.index, proc.pid, proc.returncode, lived, child.backoff)
                child.proc = None
                child.next_start = now + child.backoff
                child.backoff = min(child.backoff * 2, _BACKOFF_MAX)
            if child.proc is None and now >= child.next_start:
                child.restarts += 1
                spawn(child)
        stop.wait(0.1)

    # Drain: every child gets SIGTERM and the shutdown timeout to finish.
    log.info("stopping %d children", processes)
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + shutdown_timeout + 10.0
    code = 0
    for child in children:
        if child.proc is None:
            continue
        try:
            rc = child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("child %d did not stop in time; killing it", child.index)
            child.proc.kill()
            rc = child.proc.wait()
        child.read_status()
        if rc != 0:
            code = 1
    if gave_up is not None:
        _report_start_limit(gave_up)  # last, so that it is the last line on stderr
        return EX_CONFIG
    return code


def _report_start_limit(child: _Child) -> None:
    error = child.last_error or "see the child's error above"
    message = (f"foxtive: child {child.index} failed at start-up with a configuration or "
               f"authentication error {len(child.startup_failures)} times in a row within "
               f"{START_LIMIT_WINDOW:g} s; giving up (exit {EX_CONFIG}). Last error: {error}")
    print(message, file=sys.stderr, flush=True)


#: Words of a broker's refusal to authenticate or authorise (Redis, RabbitMQ).
_AUTH_WORDS = ("WRONGPASS", "NOAUTH", "NOPERM", "invalid password",
               "invalid username-password", "ACCESS_REFUSED", "authentication fail",
               "access refused", "not authorized", "NOT_ALLOWED")


def is_startup_error(exc: BaseException) -> bool:
    """A failure restarting cannot fix: a setting, the target, credentials."""
    if isinstance(exc, (ConfigError, ImportError)):
        return True
    text = str(exc).lower()
    return any(word.lower() in text for word in _AUTH_WORDS)


class StartupGuard:
    """The child side of the start limit (see the module docs).

    Inert unless ``FOXTIVE_STATUS_FD`` is set (the parent sets it). Watches the
    pool until its backend is connected and running; an error before that which
    :func:`is_startup_error` recognises becomes exit code :data:`EX_CONFIG`,
    its text written to stderr and to the status pipe."""

    def __init__(self) -> None:
        raw = os.environ.pop("FOXTIVE_STATUS_FD", None)
        self.fd: int | None = int(raw) if raw and raw.isdigit() else None
        self.ready = threading.Event()

    def watch(self, pool: Any) -> None:
        if self.fd is None:
            return
        threading.Thread(target=self._watch, args=(pool,), name="foxtive-ready",
                         daemon=True).start()

    def _watch(self, pool: Any) -> None:
        while not self.ready.is_set():
            try:
                if _pool_ready(pool):
                    self.ready.set()
                    return
            except Exception:  # a pool being torn down: nothing to report
                return
            time.sleep(0.05)

    def exit_code(self, exc: BaseException) -> int | None:
        """:data:`EX_CONFIG` for a start-up error in a supervised child, else None."""
        if self.fd is None or self.ready.is_set() or not is_startup_error(exc):
            return None
        text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        print(f"foxtive: could not start: {text}", file=sys.stderr, flush=True)
        try:
            os.write(self.fd, (text + "\n").encode("utf-8", "replace"))
        except OSError:
            pass
        return EX_CONFIG


def _pool_ready(pool: Any) -> bool:
    """Running, with a backend that has connected at least once (when it can say)."""
    if pool.stats().get("state") != "running":
        return False
    backend = getattr(pool, "backend", None)
    state = getattr(backend, "state", None)
    return state is None or state == "connected"
