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


def cmd_run(args: argparse.Namespace) -> int:
    pool = _pool_from(args.target)
    if args.shutdown_timeout is not None:
        from ._config import seconds

        pool.shutdown_timeout = seconds("shutdown_timeout", args.shutdown_timeout)
    pool.run()
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    return asyncio.run(demo.main(total=args.messages, rate=args.rate))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foxtive", description="Background workers with a Rust core.")
    p.add_argument("--log-level", default=os.environ.get("FOXTIVE_LOG_LEVEL", "INFO"),
                   help="logging level (default: INFO; env FOXTIVE_LOG_LEVEL)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pool: foxtive run module:attr")
    run.add_argument("target", help="module:attr, a WorkerPool built with_backend(...) "
                                    "or a zero-argument callable returning one")
    run.add_argument("--shutdown-timeout", type=float, default=None,
                     help="seconds to let in-flight messages finish on SIGTERM")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="an email worker on the in-process backend")
    demo.add_argument("--messages", type=int, default=None,
                      help="stop after this many emails (default: run until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=1000.0, help="emails published per second")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"foxtive: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
