"""A throwaway 3-node RabbitMQ cluster for the cluster tests and the failover bench.

    with RabbitCluster(tmp_path) as cluster:     # fx1@localhost.. on 5701-5703
        url = cluster.url()                      # every node, comma-separated
        cluster.stop_node(cluster.leader(queue))

Nodes run from the installed ``rabbitmq-server`` with everything of their own
in ``base``: node names ``fx1@localhost``.., AMQP ports 5701.., distribution
ports 25701.., data, logs, config, plugins (none) and the Erlang cookie (a
``HOME`` of their own, so the shared broker's cookie is never read or
written). The system ``rabbitmq-env.conf`` (which names the shared node) is
replaced by an empty one. The shared broker on 5672 is never touched.

The nodes form the cluster themselves at boot (classic-config peer discovery
naming fx1..fx3: the same membership ``rabbitmqctl join_cluster`` makes):
fx1 boots first, the others join it. The CLI is used only to ask who leads a
queue, because on a loaded 2-core machine every ``rabbitmqctl`` call spends
~30 s booting its own Erlang VM; readiness is the AMQP port answering, and a
node is stopped with SIGTERM, which ``rabbitmq-server`` turns into the same
orderly stop as ``rabbitmqctl stop``. ``close()`` (also on failure, through
the context manager) stops every node that way and then kills what is left
by process group."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import aio_pika

SBIN = Path("/usr/lib/rabbitmq/bin")
FIRST_PORT = 5701
FIRST_DIST_PORT = 25701
START_TIMEOUT = 180.0


def amqp_answers(port: int) -> bool:
    """Whether an AMQP 0-9-1 broker answers on ``port`` (connection.start)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"AMQP\x00\x00\x09\x01")
            return sock.recv(1) == b"\x01"  # a method frame
    except OSError:
        return False


def available() -> str | None:
    """Why a cluster cannot be started here, or None when it can."""
    if not (SBIN / "rabbitmq-server").exists():
        return f"{SBIN}/rabbitmq-server is not installed (apt-get install rabbitmq-server)"
    return None


@dataclass
class Node:
    index: int
    base: Path
    proc: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.base / f"fx{self.index}.out"

    @property
    def name(self) -> str:
        return f"fx{self.index}@localhost"

    @property
    def port(self) -> int:
        return FIRST_PORT + self.index - 1

    @property
    def dist_port(self) -> int:
        return FIRST_DIST_PORT + self.index - 1

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2f"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RabbitCluster:
    def __init__(self, base: Path, size: int = 3, also_listen: str | None = None) -> None:
        """``also_listen``: one more address every node listens on (the
        bridge of a :class:`NetLab`), besides 127.0.0.1."""
        self.base = base
        self.also_listen = also_listen
        self.home = base / "home"
        self.nodes = [Node(i, base / f"fx{i}") for i in range(1, size + 1)]
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
            cookie.chmod(0o400)
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")

    # -- environment -------------------------------------------------------

    def env(self, node: Node | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update({
            "HOME": str(self.home),
            "RABBITMQ_CONF_ENV_FILE": str(self.base / "rabbitmq-env.conf"),
            "RABBITMQ_USE_LONGNAME": "false",
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.base / "enabled_plugins"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        })
        if node is not None:
            node.base.mkdir(parents=True, exist_ok=True)
            conf = node.base / "rabbitmq.conf"
            lines = [
                f"listeners.tcp.default = 127.0.0.1:{node.port}",
                "loopback_users = none",
                "log.console = false",
                "log.file.level = info",
                "cluster_formation.peer_discovery_backend = classic_config",
                *(f"cluster_formation.classic_config.nodes.{n.index} = {n.name}"
                  for n in self.nodes),
                # Small Raft WAL: three nodes on a shared machine.
                "raft.wal_max_size_bytes = 16000000",
                "disk_free_limit.absolute = 10MB",
            ]
            if self.also_listen:
                lines.append(f"listeners.tcp.2 = {self.also_listen}:{node.port}")
            conf.write_text("\n".join(lines) + "\n")
            env.update({
                "RABBITMQ_NODENAME": node.name,
                "RABBITMQ_DIST_PORT": str(node.dist_port),
                "RABBITMQ_CONFIG_FILE": str(conf),
                "RABBITMQ_ADVANCED_CONFIG_FILE": str(node.base / "advanced.config"),
                "RABBITMQ_MNESIA_BASE": str(node.base / "mnesia"),
                "RABBITMQ_LOG_BASE": str(node.base / "log"),
                "RABBITMQ_PID_FILE": str(node.base / "pid"),
                "RABBITMQ_PLUGINS_EXPAND_DIR": str(node.base / "plugins-expand"),
                "RABBITMQ_FEATURE_FLAGS_FILE": str(node.base / "feature_flags"),
            })
        return env

    def ctl(self, node: Node, *args: str, timeout: float = 120.0,
            tool: str = "rabbitmqctl", check: bool = True) -> str:
        """Run a CLI tool against ``node``; its stdout."""
        cmd = [str(SBIN / tool), "-n", node.name, *args]
        r = subprocess.run(cmd, env=self.env(), capture_output=True, text=True,
                           timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[1:])} failed ({r.returncode}): "
                               f"{r.stderr.strip() or r.stdout.strip()}")
        return r.stdout

    # -- life cycle --------------------------------------------------------

    def start(self) -> RabbitCluster:
        first, rest = self.nodes[0], self.nodes[1:]
        self._spawn(first)
        self._await(first)
        # The others find fx1 running and join it (started together: neither
        # can form a cluster of its own while fx1 answers).
        for node in rest:
            self._spawn(node)
        for node in rest:
            self._await(node)
        asyncio.run(self._check_membership())
        return self

    async def _check_membership(self) -> None:
        """One cluster, not three: a queue declared through fx1 is known to
        every node (queue metadata is cluster-wide)."""
        probe = f"foxtive-cluster-probe-{secrets.token_hex(4)}"
        first = await aio_pika.connect(self.nodes[0].url)
        try:
            ch = await first.channel()
            await ch.declare_queue(probe, durable=True)
            for node in self.nodes[1:]:
                conn = await aio_pika.connect(node.url)
                try:
                    other = await conn.channel()
                    try:
                        await other.declare_queue(probe, passive=True)
                    except aio_pika.exceptions.ChannelNotFoundEntity:
                        raise RuntimeError(f"{node.name} did not join "
                                           f"{self.nodes[0].name}'s cluster") from None
                finally:
                    await conn.close()
            await ch.queue_delete(probe)
        finally:
            await first.close()

    def _spawn(self, node: Node) -> None:
        node.base.mkdir(parents=True, exist_ok=True)
        out = open(node.log, "ab")
        node.proc = subprocess.Popen(
            [str(SBIN / "rabbitmq-server")], env=self.env(node),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            # Its own process group: close() can kill the node and its port
            # helpers without touching anything else.
            start_new_session=True,
        )
        out.close()

    def _await(self, node: Node) -> None:
        """Until the node's AMQP listener answers the protocol header (it
        opens last, once the node has booted and joined)."""
        deadline = time.monotonic() + START_TIMEOUT
        while not amqp_answers(node.port):
            if node.proc is not None and node.proc.poll() is not None:
                raise RuntimeError(f"{node.name} exited ({node.proc.returncode}); "
                                   f"see {node.log}: {self._tail(node)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{node.name} did not start in {START_TIMEOUT}s: "
                                   f"{self._tail(node)}")
            time.sleep(0.2)  # polling a port: there is nothing to await on

    @staticmethod
    def _tail(node: Node) -> str:
        try:
            return node.log.read_text(errors="replace")[-1500:]
        except OSError:
            return "(no log)"

    def stop_node(self, node: Node) -> None:
        """Stop ``node`` the way an operator does (SIGTERM = ``rabbitmqctl
        stop``): it closes its client connections and leaves; the others go on."""
        if node.proc is None or node.proc.poll() is not None:
            return
        node.proc.send_signal(signal.SIGTERM)
        try:
            node.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
        self._kill(node)  # leftovers of its group

    def restart_node(self, node: Node) -> None:
        self._spawn(node)
        self._await(node)

    def _kill(self, node: Node) -> None:
        if node.proc is None:
            return
        try:
            os.killpg(node.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            node.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        for node in self.nodes:
            if node.running and node.proc is not None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    pass
                # Leftovers in the node's group (erl_child_setup, inet_gethost).
                self._kill(node)

    def __enter__(self) -> RabbitCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    # -- questions ---------------------------------------------------------

    def url(self, nodes: list[Node] | None = None) -> str:
        """One URL naming several nodes (foxtive's comma form)."""
        hosts = ",".join(f"127.0.0.1:{n.port}" for n in (nodes or self.nodes))
        return f"amqp://guest:guest@{hosts}/%2f"

    def node_named(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def any_running(self, but: Node | None = None) -> Node:
        for node in self.nodes:
            if node.running and node is not but:
                return node
        raise RuntimeError("no node is running")

    def leader(self, queue: str, ask: Node | None = None) -> Node:
        """The quorum queue's leader, as the cluster reports it."""
        node = ask or self.any_running()
        out = self.ctl(node, "list_queues", "name", "leader", "--formatter", "json",
                       "--quiet")
        for row in json.loads(out):
            if row.get("name") == queue and row.get("leader"):
                return self.node_named(row["leader"])
        raise RuntimeError(f"no leader reported for {queue}: {out}")

    def connected_node(self, pid: int) -> Node:
        """The node process ``pid`` holds an AMQP connection to (``ss``: the
        CLI would take ~30 s to say the same)."""
        out = subprocess.run(["ss", "-tnpH", "state", "established"], capture_output=True,
                             text=True, check=True).stdout
        ports = {n.port: n for n in self.nodes}
        found = set()
        for line in out.splitlines():
            if f"pid={pid}," not in line:
                continue
            peer = line.split()[3]  # Recv-Q Send-Q Local Peer (state omitted)
            port = int(peer.rsplit(":", 1)[1])
            if port in ports:
                found.add(port)
        if len(found) != 1:
            raise RuntimeError(f"process {pid} is connected to ports {sorted(found)}, "
                               "expected exactly one node")
        return ports[found.pop()]


# -- hosts of their own: network namespaces -----------------------------------

class NetLab:
    """Worker "hosts" in network namespaces ``fxrc-w<i>``, each with a veth
    pair whose host end joins bridge ``fxrc-br0`` (10.213.57.1/24, where the
    cluster nodes also listen); host ``i`` is 10.213.57.<10+i>. Cutting a
    host's link (its veth end down) silences it without closing anything,
    as a network partition does."""

    BRIDGE = "fxrc-br0"
    ADDRESS = "10.213.57.1"

    def __init__(self, hosts: int) -> None:
        self.hosts = list(range(1, hosts + 1))

    @staticmethod
    def _ip(*args: str, check: bool = True) -> None:
        r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
        if check and r.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip()}")

    def namespace(self, host: int) -> str:
        return f"fxrc-w{host}"

    def prefix(self, host: int) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace(host))

    def up(self) -> NetLab:
        try:
            self.down()  # leftovers of an interrupted run
            self._ip("link", "add", self.BRIDGE, "type", "bridge")
            self._ip("addr", "add", f"{self.ADDRESS}/24", "dev", self.BRIDGE)
            self._ip("link", "set", self.BRIDGE, "up")
            for h in self.hosts:
                ns = self.namespace(h)
                self._ip("netns", "add", ns)
                self._ip("link", "add", f"fxrc-h{h}", "type", "veth", "peer", "name", f"fxrc-n{h}")
                self._ip("link", "set", f"fxrc-n{h}", "netns", ns)
                self._ip("link", "set", f"fxrc-h{h}", "master", self.BRIDGE, "up")
                self._ip("-n", ns, "addr", "add", f"10.213.57.{10 + h}/24", "dev", f"fxrc-n{h}")
                self._ip("-n", ns, "link", "set", f"fxrc-n{h}", "up")
                self._ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.down()
            raise
        return self

    def cut(self, host: int) -> None:
        self._ip("link", "set", f"fxrc-h{host}", "down")

    def restore(self, host: int) -> None:
        self._ip("link", "set", f"fxrc-h{host}", "up")

    def down(self) -> None:
        for h in self.hosts:
            self._ip("link", "del", f"fxrc-h{h}", check=False)
            self._ip("netns", "del", self.namespace(h), check=False)
        self._ip("link", "del", self.BRIDGE, check=False)


# -- publishing and judging through aio-pika ----------------------------------

async def declare_and_publish(node: Node, queue: str, ids: list[str],
                              queue_type: str = "quorum") -> None:
    """Declare ``queue`` (durable, of ``queue_type``) through ``node`` (a
    quorum queue's leader, or a classic queue, then lives there: RabbitMQ
    places it on the declaring client's node) and publish ``ids`` with
    publisher confirms."""
    conn = await aio_pika.connect(node.url)
    try:
        ch = await conn.channel()
        await ch.declare_queue(queue, durable=True, arguments={"x-queue-type": queue_type})
        for start in range(0, len(ids), 500):
            await asyncio.gather(*(
                ch.default_exchange.publish(
                    aio_pika.Message(b"x" * 64, message_id=i,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=queue)
                for i in ids[start:start + 500]))
    finally:
        await conn.close()


async def ready_count(node: Node, queue: str) -> int:
    conn = await aio_pika.connect(node.url)
    try:
        ch = await conn.channel()
        q = await ch.declare_queue(queue, passive=True)
        return int(q.declaration_result.message_count or 0)
    finally:
        await conn.close()


async def delete_queue(node: Node, queue: str) -> None:
    conn = await aio_pika.connect(node.url)
    try:
        ch = await conn.channel()
        await ch.queue_delete(queue)
    finally:
        await conn.close()


# -- judging a worker's run ---------------------------------------------------

@dataclass
class Line:
    id: str
    epoch_start: int
    epoch_end: int
    at: float


def read_lines(out: Path) -> list[Line]:
    lines = []
    for raw in out.read_text().splitlines() if out.exists() else []:
        parts = raw.split()
        if len(parts) == 4:
            lines.append(Line(parts[0], int(parts[1]), int(parts[2]), float(parts[3])))
    return lines


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)  # polling a file another process writes
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def start_worker(url: str, queue: str, out: Path, *, delay: float,
                 prefetch: int, extra: tuple[str, ...] = (),
                 prefix: tuple[str, ...] = ()) -> subprocess.Popen[str]:
    """This file's worker (below) as a subprocess, once it says it is ready;
    its log (core events included) goes to ``OUT.log``. ``prefix`` runs it
    through another command (``ip netns exec NS``, which keeps the pid)."""
    with open(f"{out}.log", "a") as err:
        proc = subprocess.Popen(
            [*prefix, sys.executable, __file__, "worker", url, queue, str(out),
             "--delay", str(delay), "--prefetch", str(prefetch), *extra],
            stdout=subprocess.PIPE, stderr=err, text=True,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), (line, worker_log(out))
    return proc


def worker_log(out: Path, tail: int = 4000) -> str:
    try:
        return Path(f"{out}.log").read_text(errors="replace")[-tail:]
    except OSError:
        return ""


def stop_worker(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def resume_seconds(lines: list[Line], t0: float, t_down: float, epoch_before: int) -> float:
    """From ``t0`` (the stop began; the node was gone at ``t_down``) to the
    first message processed again: the first one handled on a new
    connection when the worker had to reconnect, else the one that ended
    the longest pause in processing that began while the node went down."""
    moved = [line.at for line in lines if line.epoch_start > epoch_before]
    if moved:
        return min(moved) - t0
    times = sorted([t0, *(line.at for line in lines if line.at >= t0)])
    assert len(times) > 1, "nothing was processed after the node stopped"
    _, resumed = max((after - before, after) for before, after in itertools.pairwise(times)
                     if before <= t_down)
    return resumed - t0


# -- a worker process ------------------------------------------------------

def run_worker(argv: list[str]) -> int:
    """``python tests/cluster/rabbitmq.py worker URL QUEUE OUT [--delay S]
    [--prefetch N]``: a foxtive pool consuming QUEUE (a quorum queue) until
    SIGTERM. Each handled message appends ``<id> <epoch at start> <epoch at
    end> <unix time at end>`` to OUT (the epoch grows with every new
    connection, so the lines show when the consumer moved)."""
    import argparse
    import logging

    import foxtive

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("queue")
    ap.add_argument("out")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--prefetch", type=int, default=50)
    ap.add_argument("--crash-on", default=None,
                    help="the process dies (os._exit) when a handler starts on this id")
    ap.add_argument("--queue-type", default="quorum")
    ap.add_argument("--heartbeat", type=int, default=None,
                    help="AMQP heartbeat (s): how soon a silent link counts as dead")
    ap.add_argument("--max-failures", type=int, default=None,
                    help="deliveries tolerated before a message is a poison pill")
    args = ap.parse_args(argv)
    out = open(args.out, "a", buffering=1)
    backend = foxtive.RabbitMqBackend(
        args.url,
        foxtive.RabbitMqConsumerConfig(queue_name=args.queue, queue_type=args.queue_type,
                                       prefetch_count=args.prefetch,
                                       heartbeat=args.heartbeat),
        reconnect_initial=0.2, reconnect_max=1.0,
    )

    async def handler(message: foxtive.Message) -> None:
        start = backend._native.epoch
        if message.id == args.crash_on:
            out.write(f"crash {message.id} {message.attempt}\n")
            os._exit(3)  # what an OOM kill or a segfault does: no goodbye
        if args.delay:
            await asyncio.sleep(args.delay)
        out.write(f"{message.id} {start} {backend._native.epoch} {time.time():.4f}\n")

    builder = foxtive.WorkerPoolBuilder("cluster-worker")
    if args.max_failures is not None:
        builder = builder.with_middleware(foxtive.RetryHandler(
            max_retries=1, initial_backoff=0.01,
            poison_pill_tracker=foxtive.PoisonPillTracker(max_failures=args.max_failures)))
    pool = (builder
            .add_worker(handler, id="h")
            .with_concurrency_limit(args.prefetch)
            .with_shutdown_timeout(10)
            .build())
    print(f"ready {os.getpid()}", flush=True)
    pool.run(backend)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: rabbitmq.py worker URL QUEUE OUT [--delay S] [--prefetch N]")
    sys.exit(run_worker(sys.argv[2:]))
