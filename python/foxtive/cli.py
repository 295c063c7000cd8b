"""The ``foxtive`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import os
import sys
from typing import Any

from .errors import ConfigError


def _load(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"target: expected 'module:attr', got {target!r}")
    sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _pool_from(target: str) -> Any:
    from .pool import WorkerPool

    obj = _load(target)
    if not isinstance(obj, WorkerPool) and callable(obj):
        obj = obj()
    if not isinstance(obj, WorkerPool):
        raise ConfigError(
            f"target: {target!r} is neither a WorkerPool nor a factory returning one "
            f"(got {type(obj).__name__})"
        )
    return obj


def _setting(cli: Any, env: str, convert: Any) -> Any:
    """CLI > environment (FOXTIVE_*) > the pool's own code > defaults."""
    if cli is not None:
        return cli
    raw = os.environ.get(env)
    if raw is None or raw == "":
        return None
    try:
        return convert(raw)
    except ValueError:
        raise ConfigError(f"{env}: invalid value {raw!r}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from ._config import integer, seconds

    processes = _setting(args.processes, "FOXTIVE_PROCESSES", int)
    concurrency = _setting(args.concurrency, "FOXTIVE_CONCURRENCY", int)
    health_port = _setting(args.health_port, "FOXTIVE_HEALTH_PORT", int)
    shutdown_timeout = _setting(args.shutdown_timeout, "FOXTIVE_SHUTDOWN_TIMEOUT", float)
    processes = integer("processes", 1 if processes is None else processes, minimum=1)
    if processes > 1:
        from .processes import run_processes

        child_args = []
        if args.log_level:
            child_args += ["--log-level", args.log_level]
        if concurrency is not None:
            child_args += ["--concurrency", str(concurrency)]
        if shutdown_timeout is not None:
            child_args += ["--shutdown-timeout", str(shutdown_timeout)]
        return run_processes(args.target, processes, child_args,
                             30.0 if shutdown_timeout is None else shutdown_timeout,
                             health_port)
    pool = _pool_from(args.target)
    if shutdown_timeout is not None:
        pool.shutdown_timeout = seconds("shutdown_timeout", shutdown_timeout)
    if concurrency is not None:
        pool.concurrency_limit = integer("concurrency", concurrency, minimum=1)
    server = None
    if health_port is not None:
        from .observe import HealthServer

        host = os.environ.get("FOXTIVE_HEALTH_HOST", "127.0.0.1")
        server = HealthServer(pool, host=host, port=health_port).start()
    try:
        pool.run()
    finally:
        if server is not None:
            server.stop()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return asyncio.run(demo.main(total=args.messages, rate=args.rate))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foxtive", description="Background workers with a Rust core.")
    p.add_argument("--log-level", default=None,
                   help="logging level (default: INFO; env FOXTIVE_LOG_LEVEL)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pool: foxtive run module:attr")
    run.add_argument("target", help="module:attr, a WorkerPool built with_backend(...) "
                                    "or a zero-argument callable returning one")
    run.add_argument("--processes", type=int, default=None,
                     help="worker processes, each a fresh interpreter, supervised "
                          "(default 1; env FOXTIVE_PROCESSES)")
    run.add_argument("--concurrency", type=int, default=None,
                     help="the pool's concurrency limit per process (env FOXTIVE_CONCURRENCY)")
    run.add_argument("--health-port", type=int, default=None,
                     help="serve /health, /ready and /metrics on 127.0.0.1:PORT (with N "
                          "processes, child i uses PORT+i; env FOXTIVE_HEALTH_PORT, "
                          "FOXTIVE_HEALTH_HOST)")
    run.add_argument("--shutdown-timeout", type=float, default=None,
                     help="seconds to let in-flight messages finish on SIGTERM "
                          "(env FOXTIVE_SHUTDOWN_TIMEOUT)")
    run.add_argument("--log-level", default=argparse.SUPPRESS,
                     help="logging level (env FOXTIVE_LOG_LEVEL)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="an email worker on the in-process backend")
    demo.add_argument("--messages", type=int, default=None,
                      help="stop after this many emails (default: run until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=1000.0, help="emails published per second")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = args.log_level or os.environ.get("FOXTIVE_LOG_LEVEL") or "INFO"
    logging.basicConfig(
        level=getattr(logging, str(level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"foxtive: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
