"""Side-by-side benchmark: foxtive, its peers and a pure-Rust ceiling (issue #7).

    . .venv/bin/activate && maturin develop --release
    cargo build --release -p foxtive-core --example rabbitmq_ceiling
    python benches/compare.py [--quick] [--rounds 3] [--workloads w1-rabbitmq,w1-memory]

The script runs under the foxtive venv. It creates ``benches/.peers-venv``
from ``benches/requirements-peers.txt`` on first use (``--no-install`` skips
that) and runs every peer in that venv, every foxtive contender in the
current interpreter, each as its own process. For each round and contender:

* the messages are pre-published to a fresh queue, outside the timed window
  (raw contenders through the Rust publisher, frameworks through their own
  ``send``/``apply_async``/``kiq``/``publish`` so the format is theirs);
* the contender process starts; its handler records every message id; a
  watcher thread in the process ends it once every id was seen (or after
  ``--idle-timeout`` without progress) and writes first/last handled times;
* the parent takes peak RSS and CPU seconds from ``wait4`` of that process.

Two rates are reported: process start -> last handled (startup included) and
first handled -> last handled (the targets use this one). Lost = ids never
seen, dup = extra deliveries. Results go to ``benches/RESULTS-compare.md``
(markdown tables, ratio foxtive / each contender) and a PNG chart next to it.

The code is in ``benches/harness/`` (its ``__init__`` maps the modules);
this script is the entry point, and the names other scripts import from it
(``compare.fill_stream``, ``compare.Recorder``, ...) are re-exported here.
"""

from __future__ import annotations

from harness.accounting import loadavg, vmrss_mib
from harness.binaries import ceiling_binary
from harness.bodies import body_for, id_of, sent_of
from harness.brokers import cleanup, delete_queues, delete_redis_keys, fill_stream
from harness.compare_cli import main
from harness.config import (
    AMQP_URL,
    BODY_SIZE,
    C_CEILING,
    FOX,
    HERE,
    PEER,
    PEERS_PY,
    PEERS_VENV,
    PREFETCH,
    REDIS_URL,
    ROOT,
    RUST,
    TARGET,
)
from harness.contenders import CONTENDERS, SLOW
from harness.fox_pool import fox_pool
from harness.mode import W6Error, async_work, set_mode, sync_work
from harness.peers_venv import ensure_peers_venv, interpreter
from harness.prepublish import prepublish
from harness.recorder import Recorder

__all__ = [
    "AMQP_URL", "BODY_SIZE", "CONTENDERS", "C_CEILING", "FOX", "HERE", "PEER", "PEERS_PY",
    "PEERS_VENV", "PREFETCH", "REDIS_URL", "ROOT", "RUST", "SLOW", "TARGET", "Recorder",
    "W6Error", "async_work", "body_for", "ceiling_binary", "cleanup", "delete_queues",
    "delete_redis_keys", "ensure_peers_venv", "fill_stream", "fox_pool", "id_of",
    "interpreter", "loadavg", "main", "prepublish", "sent_of", "set_mode", "sync_work",
    "vmrss_mib",
]

if __name__ == "__main__":
    main(__doc__.split("\n")[0])
