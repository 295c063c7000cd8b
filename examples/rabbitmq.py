"""Connect to RabbitMQ: a durable queue, prefetch, persistent publishing.

    python examples/rabbitmq.py --broker rabbitmq   # RabbitMQ on 127.0.0.1:5672, guest/guest
    python examples/rabbitmq.py                      # same code on the in-process backend

foxtive declares the queue (durable) when it is missing, consumes with
`prefetch_count` unacknowledged messages at most, acks in batches after the
handler succeeds, and publishes persistent messages with publisher confirms.
Retries wait in `{queue}.retry.<ms>` queues, dead letters go to `{queue}.dlq`.
"""

import asyncio
import uuid

import _brokers

import foxtive


async def send_email(message: foxtive.Message) -> None:
    if message.headers.get("priority") == "high":
        print(f"high priority: {message.text()} (id {message.id}, queue {message.queue}, "
              f"attempt {message.attempt}, redelivered {message.redelivered})")


async def main() -> None:
    args = _brokers.parser(__doc__, brokers=("memory", "rabbitmq")).parse_args()
    queue = f"example-emails-{uuid.uuid4().hex[:6]}"
    if args.broker == "rabbitmq":
        config = foxtive.RabbitMqConsumerConfig(
            queue_name=queue,
            prefetch_count=50,  # low (1-10): strict order; 10-100: balance; 100+: throughput
        )
        backend = foxtive.RabbitMqBackend(_brokers.RABBITMQ_URL, config)
        print(f"consuming {backend.queue_name} on {backend.url}")  # the password is redacted
    else:
        backend = foxtive.MemoryBackend(queue)
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .with_concurrency_limit(50)
        .with_middleware(foxtive.RetryHandler(max_retries=3))
        .add_worker(send_email, id="email")
        .with_backend(backend)
        .build()
    )
    await backend.publish_many([f"newsletter {i}".encode() for i in range(99)])
    await backend.publish(b"password reset", headers={"priority": "high"},
                          message_id="reset-42")

    # In production: pool.run() (or `foxtive run module:pool`) until SIGTERM.
    await pool.run_until_idle_async(timeout=30)

    s = pool.stats()
    print(f"processed {s['processed']} messages from {queue} ({args.broker})")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
