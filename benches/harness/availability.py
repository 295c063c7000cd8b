"""Whether a contender can run here (its binary built, its package in the
peers venv, its backend in this foxtive build); a skipped one is said in
the report with the reason."""

from __future__ import annotations

from harness import jetstream, postgres
from harness.binaries import ceiling_binary
from harness.config import C_CEILING
from harness.peers_venv import peers_have
from harness.tasks import TASK_CEILING


def available(workload: str, name: str, report: list[str]) -> bool:
    why = ""
    if workload.endswith("postgres"):
        why = postgres.unavailable(name)
    elif workload.endswith("nats"):
        why = jetstream.unavailable(name)
    elif name == "redis-rs ceiling":
        try:
            ceiling_binary("redis_ceiling")
        except SystemExit as e:
            why = str(e)
    elif name == "hiredis ceiling" and not C_CEILING.exists():
        why = f"build it first: sh benches/build_redis_ceiling.sh (looked for {C_CEILING})"
    elif name == "rusqlite ceiling":
        try:
            ceiling_binary("sqlite_ceiling")
        except SystemExit as e:
            why = str(e)
    elif name == "huey" and not peers_have("huey"):
        why = "huey is not installed in benches/.peers-venv"
    elif name in ("lapin ceiling", TASK_CEILING):
        try:
            ceiling_binary()
        except SystemExit as e:
            why = str(e)
    elif name.startswith("foxtive") and workload.endswith("redis"):
        import foxtive

        if not hasattr(foxtive, "RedisStreamBackend"):
            why = "this foxtive build has no RedisStreamBackend"
    if why:
        print(f"skipping {workload} / {name}: {why}", flush=True)
        report.append(f"*Skipped {workload} / {name}: {why}.*")
        report.append("")
    return not why
