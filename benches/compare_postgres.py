"""W1 and enqueue on PostgreSQL for ``benches/compare.py`` (issue 13): the code
is ``benches/harness/postgres.py``; this script is its child-mode entry
point (and re-exports its names).

    python benches/compare.py --no-install --workloads w1-postgres,enqueue-postgres
    python benches/compare_postgres.py enqueue CONTENDER SCHEMA N   # one JSON line
"""

from __future__ import annotations

import sys

from harness import postgres
from harness.postgres import (
    CONTENDERS,
    ENQUEUE,
    PG_URL,
    SLOW,
    cleanup,
    consume,
    enqueue_child,
    prepublish,
    publish,
    run_enqueue,
    rust_cmd,
    unavailable,
)

__all__ = ["CONTENDERS", "ENQUEUE", "PG_URL", "SLOW", "cleanup", "consume", "enqueue_child",
           "prepublish", "publish", "run_enqueue", "rust_cmd", "unavailable"]

if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "enqueue":
        enqueue_child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        raise SystemExit(postgres.__doc__)
