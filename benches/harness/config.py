"""Where things are and the workloads' fixed numbers: one place for both
harnesses (``compare.py``, ``compare_tasks.py``) and their child processes.

Only constants live here; what a child process sets for its workload (W2's
sleep, W3 / W6 retries) is in ``mode.py``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

#: benches/, where the entry scripts the child processes re-run live.
HERE = Path(__file__).resolve().parent.parent
ROOT = HERE.parent
COMPARE_PY = HERE / "compare.py"
TASKS_PY = HERE / "compare_tasks.py"
POSTGRES_PY = HERE / "compare_postgres.py"
PEERS_VENV = HERE / ".peers-venv"
PEERS_PY = PEERS_VENV / "bin" / "python"
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
BODY_SIZE = 100
#: The hiredis ceiling (benches/redis_ceiling.c), built by benches/build_redis_ceiling.sh.
C_CEILING = HERE / ".build" / "redis_ceiling_c"
PREFETCH = 1000  # raw clients and foxtive
SQLITE_BATCH = 500  # W1 on SQLite: rows claimed per transaction by the raw consumers
#: W1 on SQLite: one database file per run, on the same disk as the worktree.
SQLITE_DIR = Path(os.environ.get("SQLITE_BENCH_DIR", tempfile.gettempdir()))

#: What runs a contender: the current interpreter, the peers venv, or a Rust binary.
FOX = "foxtive"
PEER = "peers"
RUST = "rust"

W2_SLEEP = 0.010  # W2: each handler awaits / sleeps this long
W2_CONC = 100  # W2: concurrency (async tasks or threads) for every contender
W3_DELAY = 0.05  # W3: seconds until the retry
W6_DELAY = 3600.0  # W6: seconds until the retry
W4_RATE = 1000.0  # W4: messages per second, paced
W4_WARMUP = 5.0  # W4: seconds the contender gets to connect before the publisher starts
