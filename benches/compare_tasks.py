"""Tasks in benches/compare.py (issue 14): the "execute" workloads.

    python benches/compare.py --workloads tasks-rabbitmq,tasks-redis

50,000 no-op tasks taking ``(int, str)`` are sent before the timed window,
then drained: foxtive's App (``@app.task`` routed by its header, arguments
decoded and checked against the annotations) next to foxtive's raw message
drain of the same backend settings (the reference: the task layer may cost
at most 20 %) and the peers' own tasks, each sent through the peer's own
producer API with the same two arguments. compare.py runs every contender
as for W1; this module holds the foxtive task side (publisher, consumer)
and the contender list. Its own modes (figures: RESULTS.md, "Tasks, ..."):

    python benches/compare_tasks.py send -n 50000 --cap 2000 --brokers redis,rabbitmq
    python benches/compare_tasks.py roundtrip -n 1000 --rounds 1      # Redis, 100 tasks/s
    python benches/compare_tasks.py execcpu -n 50000 --rounds 3 [--perf-dir DIR]
    python benches/compare_tasks.py memory -n 200000 --rounds 3

``send``: tasks/s of each sender (foxtive, the peers, aio-pika with and
without publisher confirms on RabbitMQ). ``roundtrip``: p50 / p99 of send ->
result() for foxtive, the peers that keep results and a redis-py floor.
``execcpu``: CPU per message inside the drain window, raw vs raw on the
tasks' messages vs tasks, optionally under ``perf record``. ``memory``: the
task layer's cost with no broker.

The code is in ``benches/harness/`` (``tasks`` and ``tasks_*``); this script
is the entry point and re-exports the names compare.py used from it.
"""

from __future__ import annotations

from harness.tasks import (
    CONTENDERS,
    N_DEFAULT,
    SEND_CHUNK,
    TASK_NAME,
    TASK_STR,
    bench_app,
    consume,
    is_tasks,
    publish,
)
from harness.tasks_cli import main

__all__ = ["CONTENDERS", "N_DEFAULT", "SEND_CHUNK", "TASK_NAME", "TASK_STR", "bench_app",
           "consume", "is_tasks", "main", "publish"]

if __name__ == "__main__":
    main()
