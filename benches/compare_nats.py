"""W1 and W3 on NATS JetStream for ``benches/compare.py`` (issue 15): the code
is ``benches/harness/jetstream.py`` (run ``python benches/compare_nats.py``
for its description); this module re-exports its names.

    python benches/compare.py --workloads w1-nats,w3-nats
"""

from __future__ import annotations

from harness import jetstream
from harness.jetstream import (
    CONTENDERS,
    FETCH,
    FOX_PREFETCH,
    NATS_URL,
    cleanup,
    consume,
    prepublish,
    publish,
    rust_cmd,
    stream_of,
    unavailable,
)

__all__ = ["CONTENDERS", "FETCH", "FOX_PREFETCH", "NATS_URL", "cleanup", "consume",
           "prepublish", "publish", "rust_cmd", "stream_of", "unavailable"]

if __name__ == "__main__":
    raise SystemExit(jetstream.__doc__)
