"""Graceful shutdown: SIGTERM or Ctrl-C never loses a message.

Runs until SIGTERM / Ctrl-C (as in a container). On the signal foxtive stops
fetching, lets the messages in flight finish (up to the shutdown timeout),
hands everything else back to the broker unacknowledged, runs teardown, and
returns. A second signal skips the wait.

    python examples/graceful_shutdown.py                 # Ctrl-C to stop
    python examples/graceful_shutdown.py --demo-signal   # sends itself SIGTERM after 10 emails
    python examples/graceful_shutdown.py --broker rabbitmq --demo-signal
"""

import asyncio
import os
import signal

import _brokers

import foxtive

TOTAL = 50


class EmailWorker(foxtive.Worker):
    id = "email-worker"
    concurrency = 4

    def __init__(self, signal_after: int | None) -> None:
        self.signal_after = signal_after
        self.sent = 0

    async def process(self, message: foxtive.Message) -> None:
        await asyncio.sleep(0.1)  # an SMTP call that must not be cut short
        self.sent += 1
        print(f"sent email {message.text()}")
        if self.sent == self.signal_after:
            print("--- sending myself SIGTERM (what `kubectl delete pod` does) ---")
            os.kill(os.getpid(), signal.SIGTERM)

    async def teardown(self) -> None:
        print(f"teardown: {self.sent} emails sent, closing the SMTP connection")


def main() -> None:
    p = _brokers.parser(__doc__)
    p.add_argument("--demo-signal", action="store_true",
                   help="send SIGTERM to this process after 10 emails")
    args = p.parse_args()
    backend = _brokers.backend(args.broker, "emails")
    worker = EmailWorker(signal_after=10 if args.demo_signal else None)
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .add_worker(worker)
        .with_shutdown_timeout(30.0)  # set terminationGracePeriodSeconds a bit above
        .with_backend(backend)
        .build()
    )
    asyncio.run(backend.publish_many([str(i).encode() for i in range(TOTAL)]))
    print(f"published {TOTAL} emails; running until SIGTERM or Ctrl-C (pid {os.getpid()})")

    pool.run()  # blocks; SIGTERM/SIGINT → graceful drain → returns

    s = pool.stats()
    print(f"stopped gracefully: processed {s['processed']}, "
          f"{TOTAL - s['processed']} left in the queue for the next worker, none lost")
    if isinstance(backend, foxtive.MemoryBackend):
        assert backend.qsize() == TOTAL - s["processed"] and backend.unacked() == 0
    asyncio.run(_brokers.cleanup(backend))


if __name__ == "__main__":
    main()
