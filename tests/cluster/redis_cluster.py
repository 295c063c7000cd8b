"""A 3-master + 3-replica Redis Cluster on 127.0.0.1:7000-7005 (cluster bus
17000-17005), started from scratch in a temporary directory and killed whole
at the end. Used by the cluster tests and ``benches/redis_cluster_scaling.py``.

redis-py's ``RedisCluster`` is the judge of the cluster's state (which master
owns which slot, ``CLUSTER KEYSLOT``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster

HOST = "127.0.0.1"
PORTS = tuple(range(7000, 7006))
#: Short, so that a killed master's replica is promoted within a few seconds.
NODE_TIMEOUT_MS = 2000


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll state in other processes (the Redis servers) until true."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class RedisClusterProcesses:
    """The six ``redis-server`` processes of the test cluster."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"{HOST}:{p}" for p in PORTS)

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(host=HOST, port=port, socket_timeout=5)

    def client(self) -> RedisCluster:
        """redis-py's cluster client (the judge), on the nodes now alive."""
        alive = [ClusterNode(HOST, p) for p in PORTS if self.alive(p)]
        return RedisCluster(startup_nodes=alive, socket_timeout=5)

    def alive(self, port: int) -> bool:
        proc = self.procs.get(port)
        return proc is not None and proc.poll() is None

    def start_node(self, port: int) -> None:
        data = self.base / str(port)
        data.mkdir(exist_ok=True)
        log = open(data / "redis.log", "ab")
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", HOST,
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
             # Partitions on the other masters keep working while one fails over.
             "--cluster-require-full-coverage", "no",
             "--dir", str(data), "--save", "", "--appendonly", "no",
             "--protected-mode", "no"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(lambda: self.node(port).ping(), 10, f"redis-server on port {port}")

    def start(self) -> None:
        for port in PORTS:
            self.start_node(port)
        subprocess.run(
            ["redis-cli", "--cluster", "create", *[f"{HOST}:{p}" for p in PORTS],
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=60)
        self.wait_ok()
        self.wait_replicas_synced()

    def wait_ok(self, timeout: float = 30) -> None:
        """Every live node says ``cluster_state:ok`` and all slots are served."""
        def ok() -> bool:
            for p in PORTS:
                if not self.alive(p):
                    continue
                info = self.node(p).execute_command("CLUSTER", "INFO")
                text = info.decode() if isinstance(info, bytes) else str(info)
                if "cluster_state:ok" not in text or "cluster_slots_ok:16384" not in text:
                    return False
            return True
        wait_until(ok, timeout, "cluster_state:ok on every node")

    def masters(self) -> dict[int, list[tuple[int, int]]]:
        """Port of each live master -> its slot ranges (from ``CLUSTER NODES``)."""
        for p in PORTS:
            if not self.alive(p):
                continue
            raw = self.node(p).execute_command("CLUSTER", "NODES")
            text = raw.decode() if isinstance(raw, bytes) else str(raw)
            out: dict[int, list[tuple[int, int]]] = {}
            for line in text.splitlines():
                parts = line.split()
                if len(parts) < 8 or "master" not in parts[2] or "fail" in parts[2]:
                    continue
                port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
                ranges = []
                for r in parts[8:]:
                    if r.startswith("["):
                        continue
                    lo, _, hi = r.partition("-")
                    ranges.append((int(lo), int(hi or lo)))
                if ranges:
                    out[port] = ranges
            return out
        raise AssertionError("no live node")

    def master_of_slot(self, slot: int) -> int:
        for port, ranges in self.masters().items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return port
        raise AssertionError(f"no master serves slot {slot}")

    def master_of_key(self, key: str) -> int:
        """The port of the master serving ``key`` (``CLUSTER KEYSLOT`` + ``CLUSTER NODES``)."""
        slot = int(self.client().keyslot(key))
        live = next(p for p in PORTS if self.alive(p))
        assert int(self.node(live).execute_command("CLUSTER", "KEYSLOT", key)) == slot
        for port, ranges in self.masters().items():
            if any(lo <= slot <= hi for lo, hi in ranges):
                return port
        raise AssertionError(f"no master serves slot {slot} ({key})")

    def kill(self, port: int) -> None:
        """SIGKILL one server (a crash: no shutdown, no save)."""
        proc = self.procs[port]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def restart(self, port: int) -> None:
        """Start a killed server again: it rejoins (as a replica of the
        master that took over) and the cluster is whole again."""
        self.start_node(port)
        self.wait_ok()
        self.wait_replicas_synced()

    def in_sync_replicas(self) -> int:
        """Live servers that are replicas with their master link up."""
        n = 0
        for p in PORTS:
            if not self.alive(p):
                continue
            info = self.node(p).info("replication")
            if (info.get("role") == "slave" and info.get("master_link_status") == "up"
                    and not info.get("master_sync_in_progress")):
                n += 1
        return n

    def wait_replicas_synced(self, timeout: float = 60) -> None:
        """Every master has an in-sync replica: only a replica in sync is
        promoted when its master dies (a fresh one is not, and the slots
        would stay down)."""
        wait_until(lambda: self.in_sync_replicas() == len(PORTS) // 2, timeout,
                   "3 in-sync replicas")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(Exception):
                proc.wait(10)
