"""W1 Redis against its ceilings and against what its handler allows (issue 11).

    sh benches/build_redis_ceiling.sh
    cargo build --release -p foxtive-core --example redis_ceiling
    maturin develop --release
    python benches/redis_ceiling.py [--messages 100000] [--rounds 3] [--batch 100]
        [--no-delete] [--only name,name]

Every round runs every contender once, one after the other (interleaved, so
machine noise hits them alike); the table gives the median of the rounds and
each contender as a ratio of foxtive's median, and the CPU time (user + system,
from ``wait4``) each contender's process used per message: on a loaded machine
that moves less than the rates do. Contenders:

* ``hiredis``          benches/redis_ceiling.c: XREADGROUP COUNT <batch>; the
  XACK (+ XDEL) of batch k and the read of batch k+1 in one write.
* ``hiredis seq``      the same, waiting for the acks before the next read
  (the plain consumer of issue 11: two round trips per batch).
* ``rust ceiling``     examples/redis_ceiling.rs: foxtive's own RESP
  connection and parser, pipelined like ``hiredis``.
* ``rust seq``         the same, two round trips per batch.
* ``foxtive``          W1 exactly: compare.py's handler (``async_work`` on
  ``id_of(message.body)``, recorded by its ``Recorder``) over
  ``RedisStreamBackend(batch_size=<batch>, delete_on_ack=<delete>)``;
  handled msg/s = messages / (last handled - first handled), as compare.py.
* ``handler loop``     no broker, no framework: the same handler driven by
  ``coro.send(None)`` over prebuilt message objects with a ``body``.
* ``foxtive memory``   the same handler through foxtive's dispatch over a
  ``MemoryBackend`` (no Redis): the most foxtive can do with this handler.

Each broker contender gets a fresh stream of N entries (compare.py's
``fill_stream``: 100-byte ``m-<i>:xxx`` bodies, group ``g`` at 0), filled
outside the timed window; afterwards nothing may be left pending.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import compare  # noqa: E402  (benches/compare.py: the W1 handler and helpers)

URL = compare.REDIS_URL
CONTENDERS = ("hiredis", "hiredis seq", "rust ceiling", "rust seq", "foxtive",
              "handler loop", "foxtive memory")
C_BINARY = HERE / ".build" / "redis_ceiling_c"


def w1_handler(rec: Any) -> Any:
    """compare.py's W1 foxtive handler, word for word."""
    async def handler(message: Any) -> None:
        await compare.async_work(rec, compare.id_of(message.body), compare.sent_of(message.body))
    return handler


def quiet_recorder(n: int) -> Any:
    """compare.py's Recorder that never ends the process (it waits for n + 1 ids)."""
    fd, path = tempfile.mkstemp(prefix="foxtive-ceiling-")
    os.close(fd)
    return compare.Recorder(n + 1, path, idle_timeout=3600)


def child_foxtive(stream: str, n: int, batch: int, delete: bool, result: str) -> None:
    import asyncio

    import foxtive

    rec = compare.Recorder(n, result, idle_timeout=30)
    pool = compare.fox_pool(w1_handler(rec), rec)
    config = foxtive.RedisStreamConsumerConfig(stream_name=stream, group_name="g",
                                               batch_size=batch, delete_on_ack=delete)
    backend = foxtive.RedisStreamBackend(URL, config)
    asyncio.run(pool.run_async(backend, handle_signals=False))  # the Recorder exits


def child_handler_loop(n: int) -> dict[str, float]:
    class Msg:
        __slots__ = ("body",)

        def __init__(self, body: bytes) -> None:
            self.body = body

    rec = quiet_recorder(n)
    handler = w1_handler(rec)
    msgs = [Msg(compare.body_for(i)) for i in range(n)]
    t0 = time.perf_counter()
    for m in msgs:
        coro = handler(m)
        try:
            coro.send(None)
        except StopIteration:
            pass
    secs = time.perf_counter() - t0
    assert len(rec.hits) <= n
    return {"n": n, "seconds": secs, "rate": n / secs}


def child_foxtive_memory(n: int) -> dict[str, float]:
    import foxtive

    rec = quiet_recorder(n)
    backend = foxtive.MemoryBackend("bench")
    backend.publish_bulk([compare.body_for(i) for i in range(n)])
    pool = foxtive.WorkerPoolBuilder("bench").add_worker(w1_handler(rec), id="noop").build()
    t0 = time.perf_counter()
    assert pool.run_until_idle(backend, timeout=600), "pool did not go idle"
    secs = time.perf_counter() - t0
    return {"n": n, "seconds": secs, "rate": n / secs}


def ceiling_cmd(name: str, stream: str, args: argparse.Namespace) -> list[str]:
    binary = str(C_BINARY) if name.startswith("hiredis") else compare.ceiling_binary(
        "redis_ceiling")
    cmd = [binary, "--url", URL, "--stream", stream, "--group", "g",
           "--count", str(args.batch), "--expect", str(args.messages)]
    if args.delete:
        cmd.append("--delete")
    if name.endswith("seq"):
        cmd.append("--sequential")
    return cmd


def check_and_clean(stream: str, n: int, deleted: bool) -> None:
    import redis

    r = redis.Redis.from_url(URL)
    pending = r.xpending(stream, "g")["pending"]
    length = r.xlen(stream)
    r.delete(stream, f"{stream}:dlq", f"{stream}:delayed")
    assert pending == 0, f"{pending} entries left pending"
    assert length == (0 if deleted else n), f"stream length {length}"


def run_child(cmd: list[str]) -> tuple[str, float]:
    """Run ``cmd``; its stdout and the CPU seconds (user + system) it used."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, ru = os.wait4(proc.pid, 0)
        out.seek(0)
        err.seek(0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{cmd[:4]} failed ({status}):\n{err.read()[-3000:]}")
        return out.read(), ru.ru_utime + ru.ru_stime


def run_broker(name: str, args: argparse.Namespace) -> tuple[float, float]:
    stream = f"foxtive-ceiling-{uuid.uuid4().hex[:8]}"
    fd, result = tempfile.mkstemp(prefix="foxtive-ceiling-", suffix=".json")
    os.close(fd)
    if name == "foxtive":
        cmd = [sys.executable, __file__, "--child", name, "--stream", stream,
               "--messages", str(args.messages), "--batch", str(args.batch),
               "--result", result] + ([] if args.delete else ["--no-delete"])
    else:
        cmd = ceiling_cmd(name, stream, args)
    compare.fill_stream(stream, args.messages)
    try:
        out, cpu = run_child(cmd)
        if name == "foxtive":
            with open(result) as f:
                data = json.load(f)
            assert data["unique"] == args.messages and not data["dups"], data
            return float(data["unique"] / max(data["last"] - data["first"], 1e-9)), cpu
        return float(json.loads(out.strip().splitlines()[-1])["rate"]), cpu
    finally:
        os.unlink(result)
        try:
            check_and_clean(stream, args.messages, args.delete)
        except AssertionError as exc:
            raise SystemExit(f"{name}: {exc}") from exc


def run_local(name: str, args: argparse.Namespace) -> tuple[float, float]:
    out, cpu = run_child([sys.executable, __file__, "--child", name,
                          "--messages", str(args.messages)])
    return float(json.loads(out.strip().splitlines()[-1])["rate"]), cpu


def child(args: argparse.Namespace) -> None:
    if args.child == "foxtive":
        child_foxtive(args.stream, args.messages, args.batch, args.delete, args.result)
        return
    res = (child_handler_loop if args.child == "handler loop" else child_foxtive_memory)(
        args.messages)
    print(json.dumps(res), flush=True)
    os._exit(0)  # the quiet Recorder's watcher thread would keep the process alive


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--no-delete", dest="delete", action="store_false",
                    help="XACK only (W1 uses delete_on_ack=True: XACK + XDEL)")
    ap.add_argument("--only", default="")
    ap.add_argument("--child")
    ap.add_argument("--stream")
    ap.add_argument("--result")
    args = ap.parse_args()
    if args.child:
        return child(args)
    names = [c for c in CONTENDERS if not args.only or c in args.only.split(",")]
    if any(n.startswith("hiredis") for n in names) and not C_BINARY.exists():
        raise SystemExit("build the C ceiling first: sh benches/build_redis_ceiling.sh")
    rates: dict[str, list[float]] = {c: [] for c in names}
    cpus: dict[str, list[float]] = {c: [] for c in names}
    for r in range(args.rounds):
        for name in names:
            local = name in ("handler loop", "foxtive memory")
            rate, cpu = run_local(name, args) if local else run_broker(name, args)
            rates[name].append(rate)
            cpus[name].append(cpu * 1e6 / args.messages)
            print(f"round {r + 1} {name:15} {rate:>12,.0f} msg/s {cpus[name][-1]:6.2f} us CPU/msg",
                  file=sys.stderr, flush=True)
    med = {c: statistics.median(v) for c, v in rates.items()}
    cpu_med = {c: statistics.median(v) for c, v in cpus.items()}
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{args.messages:,} entries of {compare.BODY_SIZE} B, COUNT/batch_size "
          f"{args.batch}, {'XACK+XDEL' if args.delete else 'XACK only'}, median of "
          f"{args.rounds} interleaved rounds, load average {load} at the end")
    print("| contender | msg/s (median) | rounds | foxtive / this | CPU us/msg (process, "
          "startup included) |\n|---|---:|---|---:|---:|")
    for c in names:
        runs = ", ".join(f"{x:,.0f}" for x in rates[c])
        ratio = f"{med['foxtive'] / med[c]:.2f}" if "foxtive" in med else "-"
        print(f"| {c} | {med[c]:,.0f} | {runs} | {ratio} | {cpu_med[c]:.2f} |")


if __name__ == "__main__":
    main()
