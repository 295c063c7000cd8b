"""Two legs of the round trip on Redis on their own, paced like it (issue 14).

    python benches/roundtrip_hops.py -n 1000 --rate 100          # the record write
    python benches/roundtrip_hops.py wake -n 1000 --rate 100     # the waiter's wake-up

The round trip's worker ends with the final record write: ``SET PX`` and a
push to ``<key>:done`` in one MULTI. foxtive writes it from the event loop
through the core (``RedisStreamBackend.write_record``: the loop thread hands
the write to the tokio thread, which sends it on the shared connection and
hands the reply back to the loop). This times, one call every 1/rate s (so the
tokio thread is parked between writes, as in the round trip), that write
next to the same MULTI sent by redis-py's asyncio client on the loop itself,
and a redis-py asyncio PING (one round trip, no write): the three in turn,
in one process, so the figures share the machine's load; and the same MULTI
on the loop's own connection (``LoopLink.run``: how ``RedisResultStore.finish``
writes it since rtloop, no other thread).

``wake``: how long after a push a blocked waiter has the element, for
``result()``'s way before rtloop (redis-py's asyncio client, BLMOVE), its way
since (BLMOVE on a wait connection of the loop's own, ``LoopLink.block``) and
the floor's (redis-py's sync client, BLPOP), in turn. A second process pushes to the
key each waiter blocks on, 3 ms after the waiter started waiting; the
element is the push's send time (``time.time_ns()``), so the waiter needs
no other clock. Its figures: benches/RESULTS.md, "Round trip on Redis:
where the time goes" and "... on the loop's own connections (rtloop)".
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
import uuid

import redis.asyncio

from foxtive import _core
from foxtive.redis_loop import LoopLink

URL = os.environ.get("FOXTIVE_REDIS_URL", "redis://127.0.0.1:6379/0")
TTL_MS = 60_000


def pct(v: list[float], q: float) -> float:
    v = sorted(v)
    return v[min(len(v) - 1, int(q * len(v)))] * 1e6


def pusher(prefix: str, n: int, rate: float, start: float) -> None:
    """The ``wake`` mode's second process: push slot i's key at its time + 3 ms."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(URL)
    for i in range(n):
        delay = start + i / rate + 0.003 - time.time()
        if delay > 0:
            time.sleep(delay)
        r.lpush(f"{prefix}{i}:done", str(time.time_ns()))


async def wake(n: int, rate: float) -> None:
    import redis as sync_redis

    prefix = f"rt-wake-{uuid.uuid4().hex[:8]}:"
    start = time.time() + 1.0
    child = subprocess.Popen([sys.executable, __file__, "pusher", "--prefix", prefix,
                              "-n", str(n), "--rate", str(rate), "--start", repr(start)])
    sync = sync_redis.Redis.from_url(URL)
    client = redis.asyncio.Redis.from_url(URL)
    commands = _core.RedisCommands(URL)
    link = LoopLink.of(commands)
    ways = ["redis-py asyncio BLMOVE (result()'s way before)",
            "LoopLink.block BLMOVE (result()'s way now)",
            "redis-py sync BLPOP (the floor's way)"]
    lat: dict[str, list[float]] = {way: [] for way in ways}
    late = 0

    async def go() -> None:
        nonlocal late
        await client.ping()
        sync.ping()
        for i in range(n):
            delay = start + i / rate - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            key = f"{prefix}{i}:done"
            began = time.time_ns()
            way = ways[i % 3]
            if i % 3 == 0:
                got = await client.blmove(key, key, 5, "RIGHT", "RIGHT")
            elif i % 3 == 1:
                # wait_command takes the record's key: it blocks on <key>:done
                got = await link.block(commands.wait_command(key.removesuffix(":done"), 5), 15)
            else:
                reply = sync.blpop([key], timeout=5)
                got = None if reply is None else reply[1]
            now = time.time_ns()
            if got is None:
                raise SystemExit(f"no push for slot {i}")
            pushed = int(got)
            if pushed < began:  # the push came before the wait: no wake-up to time
                late += 1
                continue
            lat[way].append((now - pushed) / 1e9)
        await client.delete(*[f"{prefix}{i}:done" for i in range(n)])
        await client.aclose()

    try:
        await go()
    finally:
        child.wait(30)
    print(f"{n} waits, one every {1000 / rate:.1f} ms, the ways in turn; {late} not timed "
          f"(pushed before the wait) (load {' '.join(open('/proc/loadavg').read().split()[:3])})")
    print("| way | p50 us | p90 us | p99 us | mean us |\n|---|---:|---:|---:|---:|")
    for k, v in lat.items():
        print(f"| {k} | {pct(v, .5):.0f} | {pct(v, .9):.0f} | {pct(v, .99):.0f} | "
              f"{statistics.fmean(v) * 1e6:.0f} |")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", nargs="?", default="write", choices=["write", "wake", "pusher"])
    ap.add_argument("-n", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--start", type=float, default=0.0)
    args = ap.parse_args()
    if args.mode == "pusher":
        return pusher(args.prefix, args.n, args.rate, args.start)
    if args.mode == "wake":
        return await wake(args.n, args.rate)
    prefix = f"rt-hops-{uuid.uuid4().hex[:8]}:"
    core = _core.RedisStreamBackend(URL, _core.RedisStreamConsumerConfig(
        stream_name=f"{prefix}writer", group_name="foxtive"))
    client = redis.asyncio.Redis.from_url(URL)
    value = b'{"status":"success","result":1}' + b" " * 40

    commands = core.commands
    link = LoopLink.of(commands)

    async def core_write(key: str) -> None:
        await commands.write_record(key, value, TTL_MS / 1000, True)

    async def loop_write(key: str) -> None:
        await link.run(*commands.record_commands(key, value, TTL_MS / 1000, True))

    async def redispy_write(key: str) -> None:
        async with client.pipeline(transaction=True) as pipe:
            pipe.set(key, value, px=TTL_MS)
            pipe.delete(f"{key}:done")
            pipe.rpush(f"{key}:done", value)
            pipe.pexpire(f"{key}:done", TTL_MS)
            await pipe.execute()

    async def redispy_ping(key: str) -> None:
        await client.ping()

    ways = {"core write_record (loop -> tokio -> Redis -> tokio -> loop)": core_write,
            "the loop's own connection (LoopLink.run: finish since rtloop)": loop_write,
            "redis-py asyncio MULTI on the loop": redispy_write,
            "redis-py asyncio PING on the loop": redispy_ping}
    lat: dict[str, list[float]] = {k: [] for k in ways}
    for i in range(20):  # connections up
        for fn in ways.values():
            await fn(f"{prefix}warm{i}")
    t0 = time.perf_counter()
    slot = 0
    for i in range(args.n):
        for k, fn in ways.items():
            delay = t0 + slot / args.rate - time.perf_counter()
            slot += 1
            if delay > 0:
                await asyncio.sleep(delay)
            t = time.perf_counter()
            await fn(f"{prefix}{i}")
            lat[k].append(time.perf_counter() - t)
    print(f"{args.n} of each, one call every {1000 / args.rate:.1f} ms, the ways in turn "
          f"(load {' '.join(open('/proc/loadavg').read().split()[:3])})")
    print("| way | p50 us | p90 us | p99 us | mean us |\n|---|---:|---:|---:|---:|")
    for k, v in lat.items():
        print(f"| {k} | {pct(v, .5):.0f} | {pct(v, .9):.0f} | {pct(v, .99):.0f} | "
              f"{statistics.fmean(v) * 1e6:.0f} |")
    keys = [k async for k in client.scan_iter(match=f"{prefix}*", count=1000)]
    for i in range(0, len(keys), 500):
        await client.delete(*keys[i:i + 500])
    link.close()
    await core.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main())
