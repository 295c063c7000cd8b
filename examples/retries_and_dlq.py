"""Retries with exponential backoff, then the dead-letter queue.

The "SMTP server" fails the first attempt of every third email, so those are
retried (the retry waits in the broker, not in the worker) and then succeed.
One email always fails: after max_retries it lands in the dead-letter queue,
where we inspect it.

    python examples/retries_and_dlq.py [--broker memory|rabbitmq|redis]
"""

import asyncio

import _brokers

import foxtive


async def send_email(message: foxtive.Message) -> None:
    n = int(message.text())
    if n == 7:
        raise ConnectionError("mailbox unavailable")  # fails every time
    if n % 3 == 0 and message.attempt == 1:
        raise TimeoutError("SMTP timed out")  # fails once, then works
    print(f"email {n} sent on attempt {message.attempt}")


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "emails")
    retry_handler = foxtive.RetryHandler(
        max_retries=3,          # at most 4 attempts
        initial_backoff=0.05,   # wait 0.05 s after the first failure (1.0 in real life)
        max_backoff=0.2,        # never wait more than 0.2 s (60.0 in real life)
        backoff_multiplier=2.0, # 0.05, 0.1, 0.2
        jitter=False,           # keep the example predictable
    )
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .with_middleware(retry_handler)
        .add_worker(send_email, id="email")
        .with_backend(backend)
        .build()
    )
    await backend.publish_many([str(n).encode() for n in range(1, 11)])

    await pool.run_until_idle_async(timeout=30)  # retries that come due included

    s = pool.stats()
    print(f"processed {s['processed']}, failed attempts {s['failed']}, "
          f"retried {s['retried']}, dead-lettered {s['dead_lettered']}")
    for body, error in await _brokers.dead_letters(backend):
        print(f"dead letter: email {body.decode()} ({error})")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
