"""One timed run of one contender (parent side): the child process
spawned, W4's paced publisher started beside it, CPU seconds from
``wait4``, peak RSS polled from ``/proc``, the handled ids and times read
from the child's result file (the Rust ceilings print theirs); and the
same for several processes sharing one queue."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from harness import jetstream, postgres
from harness.accounting import cpu_seconds, poll_hwm
from harness.binaries import ceiling_binary
from harness.children import compare_child
from harness.config import (
    C_CEILING,
    PEER,
    PREFETCH,
    REDIS_URL,
    RUST,
    SQLITE_BATCH,
    W4_RATE,
    W4_WARMUP,
)
from harness.sqlite import sqlite_path
from harness.w5 import run_w5


def run_contender(workload: str, name: str, kind: str, queue: str, n: int,
                  idle: float) -> dict[str, Any]:
    if workload.startswith("w5"):
        return run_w5(workload, name, queue, n, idle)
    if name.endswith("processes"):
        return run_shared(workload, name, kind, queue, n, idle, int(name.split()[-2]))
    fd, result = tempfile.mkstemp(prefix="foxtive-compare-", suffix=".json")
    os.close(fd)
    if kind == RUST and workload.endswith("redis"):
        binary = C_CEILING if name == "hiredis ceiling" else ceiling_binary("redis_ceiling")
        cmd = [str(binary), "--url", REDIS_URL, "--stream", queue,
               "--group", "g", "--count", "100", "--expect", str(n), "--delete"]
    elif kind == RUST and workload.endswith("sqlite"):
        cmd = [ceiling_binary("sqlite_ceiling"), "drain", sqlite_path(queue), queue, str(n),
               str(SQLITE_BATCH)]
    elif kind == RUST and workload.endswith("postgres"):
        cmd = postgres.rust_cmd(name, queue, n)
    elif kind == RUST and workload.endswith("nats"):
        cmd = jetstream.rust_cmd(name, queue, n)
    elif kind == RUST:
        cmd = [ceiling_binary(), "drain", queue, str(n), str(PREFETCH)]
    else:
        cmd = compare_child(kind, "--consume", name, "--workload", workload, "--queue", queue,
                            "-n", str(n), "--result", result, "--idle-timeout", str(idle))
    spawn = time.time()
    errfile = tempfile.TemporaryFile("w+")  # a pipe could fill up and block the child
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE if kind == RUST else subprocess.DEVNULL,
                            stderr=errfile, text=True)
    killer = threading.Timer(idle * 4 + 600, proc.kill)
    killer.start()
    hwm = [0.0]
    threading.Thread(target=poll_hwm, args=(proc.pid, hwm), daemon=True).start()
    if workload.startswith("w4"):
        time.sleep(W4_WARMUP)  # let the consumer connect and declare
        subprocess.run(compare_child(PEER, "--paced-publish", name, "--queue", queue,
                                     "-n", str(n), "--workload", workload,
                                     "--rate", str(W4_RATE)), check=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, ru = os.wait4(proc.pid, 0)
    end = time.time()
    killer.cancel()
    errfile.seek(0)
    err = errfile.read()
    errfile.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    # wait4's ru_maxrss also counts the pages of this (parent) process that the
    # forked child held before exec: a floor of ~the parent's RSS. VmHWM of the
    # exec'd process, polled while it runs, is the contender's own peak.
    res: dict[str, Any] = {"rss_mib": hwm[0] or ru.ru_maxrss / 1024,
                           "cpu_s": cpu_seconds(ru),
                           "exit": proc.returncode}
    if kind == RUST:
        line = json.loads(out.strip().splitlines()[-1])
        res.update(handled_rate=line["rate"], start_rate=line["n"] / (end - spawn),
                   lost=n - line["n"], dups=0, ids_checked=False)
    else:
        try:
            with open(result) as f:
                data = json.load(f)
        except (OSError, ValueError):
            data = {}
        os.unlink(result)
        if not data or not data.get("last"):
            sys.stderr.write(f"{name}: no result (exit {proc.returncode})\n{err[-3000:]}\n")
            res.update(handled_rate=0.0, start_rate=0.0, lost=n, dups=0, ids_checked=True)
            return res
        handled = data["unique"] + data["dups"]
        span = max(data["last"] - data["first"], 1e-9)
        for k in ("p50_ms", "p99_ms", "max_ms", "rss_before", "rss_after"):
            if k in data:
                res[k] = data[k]
        res.update(handled_rate=handled / span if handled > 1 else 0.0,
                   start_rate=data["unique"] / max(data["last"] - spawn, 1e-9),
                   lost=data["lost"], dups=data["dups"], ids_checked=True)
    return res


def run_shared(workload: str, name: str, kind: str, queue: str, n: int, idle: float,
               copies: int) -> dict[str, Any]:
    """``copies`` processes of contender ``name`` (less its " N processes")
    on one queue; each writes the ids it handled, merged here: lost and dup
    are checked over all of them, the rate spans first to last handled."""
    single = name.rsplit(" ", 2)[0]
    results = []
    for _ in range(copies):
        fd, result = tempfile.mkstemp(prefix="foxtive-compare-", suffix=".json")
        os.close(fd)
        results.append(result)
    spawn = time.time()
    procs = [subprocess.Popen(compare_child(kind, "--consume", name, "--workload", workload,
                                            "--queue", queue, "-n", str(n), "--result", r,
                                            "--idle-timeout", str(idle)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for r in results]
    rss = cpu = 0.0
    for p in procs:
        _, _, ru = os.wait4(p.pid, 0)
        rss, cpu = rss + ru.ru_maxrss / 1024, cpu + cpu_seconds(ru)
    datas = []
    for r in results:
        with contextlib.suppress(OSError, ValueError), open(r) as f:
            datas.append(json.load(f))
        os.unlink(r)
    ids = [i for d in datas for i in d.get("ids", [])]
    unique = len(set(ids))
    firsts = [d["first"] for d in datas if d.get("first")]
    last = max((d["last"] for d in datas if d.get("last")), default=0.0)
    span = max(last - min(firsts, default=last), 1e-9)
    print(f"  {single} x{copies}: {[len(d.get('ids', [])) for d in datas]} each",
          flush=True)
    return {"rss_mib": rss, "cpu_s": cpu, "exit": max(p.returncode or 0 for p in procs),
            "handled_rate": len(ids) / span if len(ids) > 1 else 0.0,
            "start_rate": unique / max(last - spawn, 1e-9), "lost": n - unique,
            "dups": len(ids) - unique, "ids_checked": True}
