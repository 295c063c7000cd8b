"""The benchmark harnesses behind ``benches/compare.py`` and
``benches/compare_tasks.py`` (both thin entry points), one concept a module.

Parent side (the process you start):

* ``compare_cli``  compare.py's flags and its loop over workloads, rounds, contenders
* ``tasks_cli``    compare_tasks.py's modes; ``tasks_send``, ``tasks_roundtrip``,
  ``tasks_execcpu``, ``tasks_memory`` one mode each
* ``contenders``   every compare.py workload and its contenders (kind, settings)
* ``availability`` whether a contender can run here
* ``peers_venv``   benches/.peers-venv and which interpreter runs a contender
* ``binaries``     the Rust ceilings built as foxtive-core examples
* ``brokers``      waiting for the brokers, filling a stream, cleaning up after a run
* ``prepublish``   filling a contender's queue before the clock starts
* ``runs``         one timed run of a contender process (``wait4``, result file)
* ``children``     the command lines of child processes and the JSON they print
* ``w5``           W5, CPU-bound, under ``foxtive run --processes``
* ``report``       the tables, the workload headings and the chart
* ``accounting``   CPU seconds, RSS, load average; ``latency`` the percentiles

Child side (re-run by the parent in a child mode, foxtive's interpreter or
the peers venv; nothing here imports a broker client or foxtive at module
level, so every module loads in both):

* ``mode``         the workload a child runs (``set_mode``) and its handlers' work
* ``recorder``     the ids a consumer handled, written for the parent
* ``bodies``       the raw bodies ``m-<i>:xxx`` and the ids read back
* ``publishers``, ``sending``  filling a queue and W4's paced publisher
* ``consumers``    the consumer of each contender; RabbitMQ's and W2's bound here
* ``fox_pool``     the foxtive pool every broker's foxtive contender runs
* ``peer_apps``    Celery, Dramatiq, taskiq (aio-pika) apps
* ``redis_contenders``, ``sqlite``, ``memory``, ``jetstream`` (NATS),
  ``postgres``, ``tasks``: one workload or broker family each

``config`` holds the paths, URLs and the workloads' fixed numbers.
"""
