"""CPU time per message of the NATS W1 drain: ``perf stat``'s task-clock
(the whole process, start-up included) of the pure-Rust ceiling and of the
NatsBackend drain (``examples/nats_backend_drain.rs``), each on a stream
filled beforehand, alternated round by round. CPU time moves much less with
the load of the machine than rates do, so two builds compare on a busy
2-core box (issue 15). This VM has no hardware counters (instructions).

    cargo build --release -p foxtive-core --example nats_ceiling --example nats_backend_drain
    python benches/nats_cpu.py [-n 100000] [--rounds 3] [--drain LABEL=TARGET_DIR ...]

``--drain`` adds a drain binary from another target dir (a build before a
change) under a label; the default is ``CARGO_TARGET_DIR``'s. Needs
``perf``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import jetstream
from harness.binaries import ceiling_binary


def perf_run(cmd: list[str]) -> float:
    """The task-clock (CPU ms) of one run."""
    out = subprocess.run(["perf", "stat", "-x,", "-e", "task-clock", *cmd],
                         capture_output=True, text=True, timeout=600, check=True)
    values: dict[str, float] = {}
    for line in out.stderr.splitlines():
        parts = line.split(",")
        if len(parts) > 2 and parts[0].replace(".", "").isdigit():
            values[parts[2]] = float(parts[0])
    return values["task-clock"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--drain", action="append", default=[])
    args = ap.parse_args()
    drains = {"drain": ceiling_binary("nats_backend_drain")}
    for spec in args.drain:
        label, target = spec.split("=", 1)
        drains[label] = str(Path(target) / "release" / "examples" / "nats_backend_drain")
    contenders = {"ceiling": ceiling_binary("nats_ceiling"), **drains}
    got: dict[str, list[float]] = {k: [] for k in contenders}
    n = args.n
    for r in range(args.rounds):
        for name, binary in contenders.items():
            queue = f"cpu-{name}-{uuid.uuid4().hex[:8]}"
            asyncio.run(jetstream.raw_fill(queue, n))
            stream = jetstream.stream_of(queue)
            if name == "ceiling":
                cmd = [binary, "drain", jetstream.NATS_URL, stream, queue, str(n),
                       str(jetstream.FOX_PREFETCH), "fetch"]
            else:
                cmd = [binary, jetstream.NATS_URL, stream, queue, str(n),
                       str(jetstream.FOX_PREFETCH), "256"]
            try:
                ms = perf_run(cmd)
            finally:
                jetstream.cleanup(queue)
            got[name].append(ms)
            print(f"round {r + 1}: {name:>10} {ms / 1000 * 100_000 / n:.3f} CPU s/100k  "
                  f"(load {os.getloadavg()[0]:.2f})", flush=True)
    base = statistics.median(got["ceiling"])
    print("| | CPU s per 100k, median (min-max) | x ceiling |")
    print("|---|---:|---:|")
    for name, runs in got.items():
        ms = statistics.median(runs)
        k = 100_000 / n / 1000
        print(f"| {name} | {ms * k:.3f} ({min(runs) * k:.3f}-{max(runs) * k:.3f}) "
              f"| {ms / base:.2f} |")


if __name__ == "__main__":
    main()
