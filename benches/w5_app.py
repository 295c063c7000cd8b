"""W5 of benches/compare.py: a CPU-bound foxtive pool for ``foxtive run``.

    W5_QUEUE=q W5_K=20000 W5_KEY=k PYTHONPATH=benches foxtive run w5_app:pool --processes 2

``W5_BROKER`` picks the backend: ``rabbitmq`` (default; queue ``W5_QUEUE``,
prefetch 100) or ``redis`` (stream ``W5_QUEUE``, group ``g``, batch 100,
``delete_on_ack``: the stream and group are filled and created by compare.py).

Each message costs ``W5_K`` iterations of pure Python (≈1 ms, calibrated by
compare.py). Every process publishes ``[handled, first, last]`` under its pid
in the Redis hash ``W5_KEY`` every 50 ms; compare.py sums them.
"""

from __future__ import annotations

import json
import os
import threading
import time

import redis

import foxtive

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
QUEUE = os.environ.get("W5_QUEUE", "w5")
K = int(os.environ.get("W5_K", "20000"))
KEY = os.environ.get("W5_KEY", "w5")
BROKER = os.environ.get("W5_BROKER", "rabbitmq")

_lock = threading.Lock()
_state = [0, 0.0, 0.0]  # handled, first, last


def burn(k: int) -> int:
    x = 0
    for i in range(k):
        x += i * i
    return x


def handler(message: foxtive.Message) -> None:
    burn(K)
    t = time.time()
    with _lock:
        _state[0] += 1
        if not _state[1]:
            _state[1] = t
        _state[2] = t


def _report() -> None:
    r = redis.Redis.from_url(REDIS_URL)
    while True:
        time.sleep(0.05)
        with _lock:
            snapshot = list(_state)
        if snapshot[0]:
            r.hset(KEY, str(os.getpid()), json.dumps(snapshot))


threading.Thread(target=_report, daemon=True).start()

if BROKER == "redis":
    backend: foxtive.Backend = foxtive.RedisStreamBackend(
        REDIS_URL, foxtive.RedisStreamConsumerConfig(
            stream_name=QUEUE, group_name="g", batch_size=100, delete_on_ack=True))
else:
    backend = foxtive.RabbitMqBackend(
        AMQP_URL, foxtive.RabbitMqConsumerConfig(queue_name=QUEUE, prefetch_count=100))
pool = foxtive.WorkerPoolBuilder("w5").add_worker(handler, id="cpu").with_backend(backend).build()
