"""The ``foxtive`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import os
import sys
import time
from typing import Any

from . import _core, demo, schedules
from ._config import integer, seconds
from .app import App
from .broker_dlq import broker_dlq as _broker_dlq
from .dashboard import Dashboard
from .dlq import DeadLetterQueue, FileDLQ, NativeDeadLetterQueue, RedisDLQ
from .errors import ConfigError
from .observe import HealthServer
from .pool import WorkerPool
from .processes import StartupGuard, run_processes


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


def _health_server(pools: list[WorkerPool], port: int | None) -> HealthServer | None:
    """``--health-port``: serve /health, /ready and /metrics for the pool this
    process runs. A server speaks for one pool, and an App run with several
    queues has a pool per queue: refused rather than answering for the first
    queue alone (a probe would miss the others' failures)."""
    if port is None:
        return None
    if len(pools) > 1:
        names = ", ".join(p.name for p in pools)
        raise ConfigError(
            f"--health-port: the app runs {len(pools)} queues here ({names}) and the health "
            "server speaks for one pool: give --queues with one queue per process (one "
            "Deployment per queue), or start foxtive.HealthServer(app.pool(q)) yourself")
    host = os.environ.get("FOXTIVE_HEALTH_HOST", "127.0.0.1")
    return HealthServer(pools[0], host=host, port=port).start()


def cmd_run(args: argparse.Namespace) -> int:
    processes = _setting(args.processes, "FOXTIVE_PROCESSES", int)
    concurrency = _setting(args.concurrency, "FOXTIVE_CONCURRENCY", int)
    health_port = _setting(args.health_port, "FOXTIVE_HEALTH_PORT", int)
    shutdown_timeout = _setting(args.shutdown_timeout, "FOXTIVE_SHUTDOWN_TIMEOUT", float)
    processes = integer("processes", 1 if processes is None else processes, minimum=1)
    if processes > 1:
        child_args = []
        if args.log_level:
            child_args += ["--log-level", args.log_level]
        if concurrency is not None:
            child_args += ["--concurrency", str(concurrency)]
        if shutdown_timeout is not None:
            child_args += ["--shutdown-timeout", str(shutdown_timeout)]
        if args.queues:
            child_args += ["--queues", args.queues]
        if args.no_scheduler:
            child_args += ["--no-scheduler"]
        return run_processes(args.target, processes, child_args,
                             30.0 if shutdown_timeout is None else shutdown_timeout,
                             health_port)
    guard = StartupGuard()  # a child of --processes N: exit 78 on a start-up error
    try:
        target = _load(args.target)
        if isinstance(target, App):  # every queue of the app (or --queues) in this process
            queues = [q for q in (args.queues or "").split(",") if q] or None
            pools = target._pools(queues, concurrency_limit=concurrency,
                                  shutdown_timeout=shutdown_timeout)
            server = _health_server(pools, health_port)
            guard.watch(pools[0])
            try:
                asyncio.run(target._run_scheduled(pools, handle_signals=True,
                                                  scheduler=not args.no_scheduler))
            finally:
                if server is not None:
                    server.stop()
            return 0
        pool = _pool_from(args.target)
        if shutdown_timeout is not None:
            pool.shutdown_timeout = seconds("shutdown_timeout", shutdown_timeout)
        if concurrency is not None:
            pool.concurrency_limit = integer("concurrency", concurrency, minimum=1)
        server = _health_server([pool], health_port)
        guard.watch(pool)
        try:
            pool.run()
        finally:
            if server is not None:
                server.stop()
    except Exception as exc:
        code = guard.exit_code(exc)
        if code is None:
            raise
        return code
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    app = _load(args.target)
    if not isinstance(app, App):
        raise ConfigError(f"target: {args.target!r} is not a foxtive.App "
                          f"(got {type(app).__name__})")
    info = schedules.describe_sync(app, args.next)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    leader = info["leader"]
    print(f"app {info['app']}: leader " + ("none" if leader is None else
          f"{leader['host']} pid {leader['pid']} (lease {leader['expires_in']:.1f}s left)"))
    if not info["schedules"]:
        print("no schedules")
    for s in info["schedules"]:
        when = f"cron {s['cron']!r}" if s["cron"] is not None else f"every {s['every']:g}s"
        print(f"\n{s['name']}  task {s['task']}  queue {s['queue']}  {when}  tz {s['tz']}  "
              f"catch_up {s['catch_up']}")
        print(f"  last tick: {s['last_tick'] or 'none'}")
        for run in s["next"]:
            print(f"  next: {run['local']}  ({run['utc']})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    return asyncio.run(demo.main(total=args.messages, rate=args.rate, db=args.db))


def cmd_db(args: argparse.Namespace) -> int:
    """``foxtive db migrate --broker URL [--schema S]``: create the SQL
    backend's tables or bring them to this foxtive's version; prints the
    version before and after."""
    url = args.broker or os.environ.get("FOXTIVE_BROKER")
    if not url:
        raise ConfigError("broker: pass --broker postgresql://... or sqlite:///path.db "
                          "(or set FOXTIVE_BROKER)")
    scheme = url.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        schema, before, after = asyncio.run(_pg_migrate(url, args.schema))
        where = f"{_core.redact_url(url)} schema {schema}"
    elif scheme == "sqlite":
        if args.schema:
            raise ConfigError("schema: SQLite has no schemas (its tables are foxtive_*)")
        path = _core.sqlite_path_from_url(url)
        before, after = _core.sqlite_migrate(path)
        where = f"SQLite file {path}"
    else:
        raise ConfigError(f"broker: foxtive db migrate is for postgresql:// and sqlite:/// "
                          f"URLs, got {scheme}://")
    print(f"{where}: version {before} before, {after} after"
          + (" (up to date)" if before == after else ""))
    return 0


async def _pg_migrate(url: str, schema: str | None) -> tuple[str, int, int]:
    return await _core.postgres_migrate(url, schema)


def _missing(args: argparse.Namespace, store: Any) -> str:
    """Why ``store`` counts as missing, in the user's terms."""
    if args.file:
        return (f"no dead-letter file at {store.path} (check --file; a FileDLQ is created "
                "when the first message is dead-lettered)")
    if args.redis:
        return f"no dead-letter stream at key {args.key!r} on {store.url} (check --key)"
    if args.broker:
        return (f"neither {args.queue!r} nor its dead-letter queue exists on "
                f"{_core.redact_url(args.broker)} (check --queue and the --broker URL)")
    return f"{store!r} does not exist"


def _store(args: argparse.Namespace) -> Any:
    chosen = [x for x in (args.file, args.redis, args.store, args.broker) if x]
    if len(chosen) != 1:
        raise ConfigError(
            "store: give exactly one of --file PATH, --redis URL, --store module:attr, "
            "--broker URL --queue Q"
        )
    if args.file:
        return FileDLQ(args.file)
    if args.redis:
        return RedisDLQ(args.redis, args.key)
    if args.broker:
        return _broker_dlq(args.broker, args.queue, args.dead_letter_queue)
    obj = _load(args.store)
    if not isinstance(obj, DeadLetterQueue) and callable(obj):
        obj = obj()
    if not isinstance(obj, DeadLetterQueue):
        raise ConfigError(f"store: {args.store!r} is not a foxtive dead-letter queue")
    return obj


def _record_dict(d: Any, with_body: bool) -> dict[str, Any]:
    out = {
        "original_id": d.original_id, "source_queue": d.source_queue, "attempts": d.attempts,
        "error_type": d.error_type, "error_message": d.error_message,
        "failed_at": d.failed_at, "worker_id": d.worker_id, "poison_pill": d.poison_pill,
    }
    if with_body:
        body = d.body
        try:
            out["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            out["body_hex"] = body.hex()
        out["headers"] = {k: (v.hex() if isinstance(v, bytes) else v)
                          for k, v in d.headers.items()}
    return out


def _report_unreadable(store: Any, after_change: bool) -> None:
    """Say how many unreadable records were skipped or set aside (stderr, so
    that ``--json`` output stays JSON)."""
    where = store.corrupt_path if isinstance(store, FileDLQ) else "the store's sidecar"
    if after_change and store.set_aside:
        print(f"set aside {store.set_aside} unreadable record(s) in {where}", file=sys.stderr)
    elif not after_change and store.unreadable:
        print(f"warning: {store.unreadable} unreadable record(s) skipped; a replay or purge "
              f"sets them aside in {where}", file=sys.stderr)


def cmd_dlq(args: argparse.Namespace) -> int:
    store = _store(args)
    if not store.exists():
        raise ConfigError(_missing(args, store))
    try:
        return _dlq_action(args, store, isinstance(store, NativeDeadLetterQueue))
    finally:
        _report_unreadable(store, args.action in ("replay", "purge"))


def _dlq_action(args: argparse.Namespace, store: Any, native: bool) -> int:
    if args.action == "list":
        records = store.get_failed_messages(limit=args.limit)
        if args.json:
            print(json.dumps([_record_dict(d, False) for d in records], indent=2))
        else:
            print(f"{len(store)} dead letter(s) in {store!r}")
            for d in records:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(d.failed_at))
                print(f"{d.original_id}  {when}Z  {d.source_queue}  attempts={d.attempts}  "
                      f"{d.error_type}: {d.error_message[:80]}")
        return 0
    if args.action == "show":
        wanted = set(args.ids)
        found = [d for d in store.get_failed_messages(limit=len(store) or 1)
                 if d.original_id in wanted]
        print(json.dumps([_record_dict(d, True) for d in found], indent=2))
        return 0 if len(found) >= len(wanted) else 1
    if args.action == "purge":
        if not args.yes:
            raise ConfigError("purge: pass --yes to delete every dead letter")
        print(f"purged {asyncio.run(store.purge())} dead letter(s)")
        return 0
    if native and not args.to:
        # Each entry moves back to its source queue as one step (AMQP
        # transaction / Lua script): nothing lost or doubled if interrupted.
        print(f"replayed {asyncio.run(store.replay(ids=args.ids or None))} dead letter(s)")
        return 0
    if not args.to:
        raise ConfigError("replay: pass --to module:attr, the backend to publish to "
                          "(--broker replays into the source queue by itself)")
    # replay, in chunks so that a long replay shows progress
    target = _load(args.to)
    if callable(target) and not hasattr(target, "publish"):
        target = target()
    ids = args.ids or [d.original_id for d in store.get_failed_messages(limit=len(store))]
    total, done = len(ids), 0

    async def replay_all() -> int:
        nonlocal done
        for start in range(0, total, 100):
            done += await store.replay(ids=ids[start:start + 100], to=target)
            bar = "#" * int(30 * done / max(total, 1))
            print(f"\rreplaying [{bar:<30}] {done}/{total}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        close = getattr(target, "close", None)
        if close is not None:
            await close()
        return done

    print(f"replayed {asyncio.run(replay_all())} dead letter(s)")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    app = _load(args.app) if args.app else None
    queues = [q for q in (args.queues or "").split(",") if q]
    board = Dashboard(broker=args.broker, queues=queues, app=app, host=args.host,
                      port=args.port, token=args.token,
                      schedule_apps=[a for a in (args.schedule_apps or "").split(",") if a])

    async def serve() -> None:
        await board.start_async()
        print(f"foxtive dashboard on {board.url}/ (Ctrl-C stops it)", file=sys.stderr,
              flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await board.stop_async()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass
    return 0


#: What ``--log-level`` and ``FOXTIVE_LOG_LEVEL`` accept (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(text: str) -> str:
    """argparse type: the level upper-cased; ``choices`` then rejects the rest."""
    return text.strip().upper()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="foxtive", description="Background workers with a Rust core.")
    p.add_argument("--log-level", default=None, type=_log_level, choices=LOG_LEVELS,
                   metavar="LEVEL",
                   help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL, any case "
                        "(default: INFO; env FOXTIVE_LOG_LEVEL)")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a pool: foxtive run module:attr")
    run.add_argument("target", help="module:attr, a WorkerPool built with_backend(...) "
                                    "or a zero-argument callable returning one")
    run.add_argument("--queues", default=None,
                     help="a foxtive.App target: the queues to run, comma-separated "
                          "(default: all of the app's)")
    run.add_argument("--processes", type=int, default=None,
                     help="worker processes, each a fresh interpreter, supervised "
                          "(default 1; env FOXTIVE_PROCESSES)")
    run.add_argument("--concurrency", type=int, default=None,
                     help="the pool's concurrency limit per process (env FOXTIVE_CONCURRENCY)")
    run.add_argument("--health-port", type=int, default=None,
                     help="serve /health, /ready and /metrics on 127.0.0.1:PORT (with N "
                          "processes, child i uses PORT+i; an app: one queue per process; "
                          "env FOXTIVE_HEALTH_PORT, FOXTIVE_HEALTH_HOST)")
    run.add_argument("--shutdown-timeout", type=float, default=None,
                     help="seconds to let in-flight messages finish on SIGTERM "
                          "(env FOXTIVE_SHUTDOWN_TIMEOUT)")
    run.add_argument("--log-level", default=argparse.SUPPRESS, type=_log_level,
                     choices=LOG_LEVELS, metavar="LEVEL",
                     help="logging level: DEBUG, INFO, WARNING, ERROR or CRITICAL, any case "
                          "(env FOXTIVE_LOG_LEVEL)")
    run.add_argument("--no-scheduler", action="store_true",
                     help="a foxtive.App target: do not run its schedules in this process "
                          "(by default every process runs a scheduler; one leads)")
    run.set_defaults(func=cmd_run)

    sched = sub.add_parser("schedules", help="list an app's schedules: next runs, last tick, "
                                             "leader")
    sched.add_argument("target", help="module:attr of a foxtive.App")
    sched.add_argument("--next", type=int, default=3, help="how many next runs (default 3)")
    sched.add_argument("--json", action="store_true", help="JSON output")
    sched.set_defaults(func=cmd_schedules)

    dlq = sub.add_parser("dlq", help="inspect, replay or purge a dead-letter store")
    dlq.add_argument("action", choices=["list", "show", "replay", "purge"])
    dlq.add_argument("ids", nargs="*", help="original message ids (show; replay: default all)")
    dlq.add_argument("--file", help="a FileDLQ path")
    dlq.add_argument("--redis", help="a RedisDLQ URL")
    dlq.add_argument("--key", default="foxtive:dead-letters", help="the RedisDLQ key")
    dlq.add_argument("--store", help="module:attr of a dead-letter queue (or a factory)")
    dlq.add_argument("--broker", help="a broker URL (amqp://, redis://, sqlite:///path.db): "
                                      "its native dead-letter queue for --queue")
    dlq.add_argument("--queue", help="--broker: the queue (RabbitMQ, SQLite) or stream (Redis) "
                                     "whose dead letters to reach ({queue}.dlq / {stream}:dlq / "
                                     "the file's dead-letter table)")
    dlq.add_argument("--dead-letter-queue", default=None,
                     help="--broker: the dead-letter queue or stream, when not the default")
    dlq.add_argument("--limit", type=int, default=100, help="list: at most this many")
    dlq.add_argument("--json", action="store_true", help="list: JSON output")
    dlq.add_argument("--to", help="replay: module:attr of the backend to publish to "
                                  "(--broker: default the source queue)")
    dlq.add_argument("--yes", action="store_true", help="purge: confirm")
    dlq.set_defaults(func=cmd_dlq)

    db = sub.add_parser("db", help="SQL backends: create or migrate their tables")
    db.add_argument("action", choices=["migrate"],
                    help="migrate: create the tables or bring them forward; prints the "
                         "version before and after")
    db.add_argument("--broker", default=None,
                    help="postgresql://... or sqlite:///path.db (env FOXTIVE_BROKER)")
    db.add_argument("--schema", default=None,
                    help="PostgreSQL: the schema (default: the URL's ?schema=, else foxtive)")
    db.set_defaults(func=cmd_db)

    board = sub.add_parser("dashboard", help="the operator's web page: queues, pools, "
                                             "dead letters, tasks")
    board.add_argument("--broker", default=None,
                       help="a broker URL (amqp://, redis://, postgresql://, sqlite:///path.db)")
    board.add_argument("--queues", default=None, help="the queues to show, comma-separated")
    board.add_argument("--app", default=None,
                       help="module:attr of a foxtive.App: its queues, broker, result "
                            "store (task look-up) and schedules")
    board.add_argument("--schedule-apps", default=None,
                       help="app names whose schedules (lease, last ticks) to read from "
                            "--broker without loading the apps, comma-separated")
    board.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; any other needs a token)")
    board.add_argument("--port", type=int, default=8181, help="port (default 8181)")
    board.add_argument("--token", default=None,
                       help="the token every API request must carry (Authorization: Bearer); "
                            "env FOXTIVE_DASHBOARD_TOKEN")
    board.set_defaults(func=cmd_dashboard)

    demo = sub.add_parser(
        "demo", help="an email worker on a SQLite queue (a temporary file unless --db)",
        description="An email worker on a durable SQLite queue, no server needed. By default "
                    "the queue is a fresh file in a temporary directory, removed at exit: each "
                    "demo starts empty and nothing is left in the working directory. --db "
                    "foxtive.db keeps the file (a Ctrl-C'd run resumes next time; list the "
                    "dead letters with foxtive dlq list --broker sqlite:///foxtive.db "
                    "--queue emails).")
    demo.add_argument("--messages", type=int, default=None,
                      help="stop after this many emails (default: run until Ctrl-C)")
    demo.add_argument("--rate", type=float, default=1000.0, help="emails published per second")
    demo.add_argument("--db", default=None, metavar="PATH",
                      help="keep the queue in this SQLite file (default: a temporary file, "
                           "removed at exit; ':memory:' for the in-process backend)")
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = args.log_level or _log_level(os.environ.get("FOXTIVE_LOG_LEVEL") or "INFO")
    if level not in LOG_LEVELS:
        parser.error(f"FOXTIVE_LOG_LEVEL: invalid level {level!r} "
                     f"(choose from {', '.join(LOG_LEVELS)}, any case)")
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"foxtive: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
