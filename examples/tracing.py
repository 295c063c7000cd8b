"""Tracing: see what happens to each message, through Python's logging.

TracingMiddleware logs every message's start and outcome on the "foxtive"
logger, with the message id, queue, attempt, worker and W3C trace ids as
`extra` fields (a JSON formatter or OpenTelemetry's logging handler picks
them up). A `traceparent` header continues the publisher's trace.

    python examples/tracing.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import logging
import sys

import _brokers

import foxtive

log = logging.getLogger("emails")


async def send_email(message: foxtive.Message) -> None:
    email = message.json()
    log.info("Sending %s to %s", email["subject"], email["to"])
    if "@" not in email["to"]:
        raise foxtive.PermanentError("invalid address")


async def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(levelname)-7s %(name)-7s %(message)s")
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "emails")
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .with_middleware(foxtive.TracingMiddleware(service_name="email"))
        .with_middleware(foxtive.RetryHandler(max_retries=0))
        .add_worker(send_email, id="email")
        .with_backend(backend)
        .build()
    )
    await backend.publish(b'{"to": "alice@example.com", "subject": "Welcome!"}')
    await backend.publish(b'{"to": "bob", "subject": "Welcome!"}')
    # A message from a traced service: its trace goes on in our logs.
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    await backend.publish(b'{"to": "carol@example.com", "subject": "Your order"}',
                          headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})

    await pool.run_until_idle_async(timeout=30)

    s = pool.stats()
    print(f"processed {s['processed']}, dead-lettered {s['dead_lettered']}; "
          f"carol's message carried trace {trace_id}")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
