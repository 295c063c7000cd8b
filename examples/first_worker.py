"""Your first worker: an email notification service.

Each message is an email to send: {"to": "...", "subject": "...", "body": "..."}.
Returning acks it; PermanentError sends a bad message straight to the
dead-letter queue; any other exception would retry it with backoff.

    python examples/first_worker.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import json

import _brokers

import foxtive


class EmailWorker(foxtive.Worker):
    id = "email-worker"

    async def setup(self) -> None:
        print("setup: connecting to SMTP (pretend)")

    async def process(self, message: foxtive.Message) -> None:
        email = message.json()  # a body that is not JSON raises PayloadError → dead letter
        if "@" not in email.get("to", ""):  # always validate your input
            raise foxtive.PermanentError(f"invalid address {email.get('to')!r}")
        await asyncio.sleep(0.01)  # talk to SMTP here
        print(f"Sending {email['subject']!r} to {email['to']}")

    async def teardown(self) -> None:
        print("teardown: closing the SMTP connection")


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "emails")
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .add_worker(EmailWorker())
        .with_backend(backend)
        .build()
    )
    emails = [{"to": f"user{i}@example.com", "subject": "Welcome!", "body": "Hi"}
              for i in range(10)]
    emails.append({"to": "not-an-address", "subject": "Welcome!", "body": "Hi"})
    await backend.publish_many([json.dumps(e).encode() for e in emails])

    await pool.run_until_idle_async(timeout=30)  # process what is there, then stop

    s = pool.stats()
    print(f"processed {s['processed']}, dead-lettered {s['dead_lettered']}")
    for body, error in await _brokers.dead_letters(backend):
        print(f"dead letter: {body.decode()} ({error})")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
