"""What the examples share: the ``--broker`` flag, a backend for it, clean-up.

Each example runs on the in-process memory backend by default. With
``--broker rabbitmq`` (or ``--broker redis`` where it applies) it uses the real
broker on 127.0.0.1, on a queue / stream with a unique name, and deletes it
afterwards (that part needs ``aio-pika`` / ``redis``: ``pip install aio-pika redis``).
"""

from __future__ import annotations

import argparse
import sys
import uuid
from typing import Any

import foxtive

RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"
REDIS_URL = "redis://127.0.0.1:6379/0"


def parser(description: str | None, brokers: tuple[str, ...] = ("memory", "rabbitmq", "redis"),
           ) -> argparse.ArgumentParser:
    """An argument parser with ``--broker`` (add your own flags, then ``parse_args()``)."""
    p = argparse.ArgumentParser(description=(description or "").strip().splitlines()[0])
    p.add_argument("--broker", choices=brokers, default="memory",
                   help="where messages live (default: memory, in-process)")
    return p


def backend(broker: str, name: str, **rabbitmq_config: Any) -> Any:
    """A backend on ``broker`` for a queue called ``example-<name>-<random>``."""
    queue = f"example-{name}-{uuid.uuid4().hex[:6]}"
    if broker == "memory":
        return foxtive.MemoryBackend(queue)
    if broker == "rabbitmq":
        return foxtive.RabbitMqBackend(
            RABBITMQ_URL, foxtive.RabbitMqConsumerConfig(queue_name=queue, **rabbitmq_config)
        )
    if broker == "redis":
        backend_class = getattr(foxtive, "RedisStreamBackend", None)
        config_class = getattr(foxtive, "RedisStreamConsumerConfig", None)
        if backend_class is None or config_class is None:
            sys.exit("--broker redis: this foxtive has no RedisStreamBackend (Redis Streams "
                     "support is not in this build); use --broker memory or rabbitmq")
        return backend_class(REDIS_URL, config_class(stream_name=queue, group_name="examples"))
    sys.exit(f"--broker: unknown broker {broker!r}")


def queue_of(backend: Any) -> str:
    """The queue / stream name a backend consumes."""
    return str(backend.name)


async def dead_letters(backend: Any) -> list[tuple[bytes, str]]:
    """``(body, "ErrorType: message")`` of each dead letter, wherever the broker keeps them."""
    if isinstance(backend, foxtive.MemoryBackend):
        return [(d.body, f"{d.error_type}: {d.error_message}") for d in backend.dead_letters()]
    if isinstance(backend, foxtive.RabbitMqBackend):  # the native DLQ, `{queue}.dlq`
        import aio_pika

        out = []
        conn = await aio_pika.connect(RABBITMQ_URL)
        async with conn:
            channel = await conn.channel()
            dlq = await channel.declare_queue(backend.dead_letter_queue, passive=True)
            while (m := await dlq.get(fail=False)) is not None:
                h = m.headers
                out.append((m.body, f"{h.get('x-foxtive-error-type')}: {h.get('x-foxtive-error')}"))
                await m.ack()
        return out
    return [(d.body, f"{d.error_type}: {d.error_message}") for d in backend.dead_letters()]


async def cleanup(*backends: Any) -> None:
    """Delete what the examples declared on real brokers (memory: nothing to do)."""
    for b in backends:
        inner = getattr(b, "backend", b)  # a ResilientBackend's wrapped backend
        try:
            if isinstance(inner, foxtive.RabbitMqBackend):
                import aio_pika

                conn = await aio_pika.connect(RABBITMQ_URL)
                async with conn:
                    channel = await conn.channel()
                    # Retry-delay queues ({queue}.retry.<ms>) expire by themselves.
                    for queue in (inner.queue_name, inner.dead_letter_queue):
                        await channel.queue_delete(queue)
            elif not isinstance(inner, foxtive.MemoryBackend):
                import redis.asyncio as aioredis

                client = aioredis.from_url(REDIS_URL)
                stream = queue_of(inner)
                keys = [stream, *[k async for k in client.scan_iter(match=f"{stream}:*")]]
                await client.delete(*keys)
                await client.aclose()
        except ImportError as exc:
            print(f"(not cleaning up {queue_of(inner)}: {exc.name} is not installed)")
