"""A circuit breaker: stop hammering an SMTP server that is down.

The server is down for the first three calls. After three failures in a row
the breaker opens: no handler is called, messages wait (not counted as
attempts). After reset_timeout it half-opens and lets one probe through;
the probe succeeds, the breaker closes, and every email goes out. Nothing
is lost.

    python examples/circuit_breaker.py [--broker memory|rabbitmq|redis]
"""

import asyncio

import _brokers

import foxtive

smtp_calls = 0
pool: foxtive.WorkerPool


async def send_email(message: foxtive.Message) -> None:
    global smtp_calls
    smtp_calls += 1
    state = pool.stats()["circuit_breaker"]
    if smtp_calls <= 3:
        print(f"call {smtp_calls} (breaker {state}): SMTP down")
        raise ConnectionError("SMTP down")
    print(f"call {smtp_calls} (breaker {state}): sent email {message.text()}")


async def main() -> None:
    global pool
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "emails")
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .with_concurrency_limit(1)  # one at a time keeps the story easy to follow
        .with_middleware(foxtive.CircuitBreakerMiddleware(
            failure_threshold=3,    # open after 3 failures in a row
            reset_timeout=0.3,      # half-open after 0.3 s (30 s in real life)
            success_threshold=1,    # one good probe closes it
        ))
        .with_middleware(foxtive.RetryHandler(max_retries=5, initial_backoff=0.01,
                                              max_backoff=0.05))
        .add_worker(send_email, id="smtp")
        .with_backend(backend)
        .build()
    )
    await backend.publish_many([str(i).encode() for i in range(1, 11)])

    await pool.run_until_idle_async(timeout=30)

    s = pool.stats()
    print(f"processed {s['processed']}, dead-lettered {s['dead_lettered']}, "
          f"breaker {s['circuit_breaker']} after {s['circuit_breaker_transitions']} transitions "
          "(closed → open → half_open → closed)")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
