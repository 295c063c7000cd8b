"""Backends that refuse to die: ResilientBackend reconnects forever, with backoff.

Wrap any backend; when the broker goes away (restart, network partition,
rescheduled pod) it moves to "reconnecting", waits the strategy's delay,
tries again, and carries on once the broker is back. Nothing unsettled is
lost: the broker redelivers it.

By default this runs on a tiny in-process queue whose "connection" drops
for half a second mid-run. With --broker rabbitmq it wraps the real
RabbitMQ backend (restart RabbitMQ during a longer run to see the same).

    python examples/resilient_backend.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import collections
from typing import Any

import _brokers

import foxtive

TOTAL = 10


class FlakyQueue(foxtive.Backend):
    """An in-process queue whose connection can be cut (a foxtive.Backend in Python)."""

    name = "flaky"

    def __init__(self) -> None:
        self.ready: collections.deque[bytes] = collections.deque()
        self.down = False

    async def connect(self) -> None:
        if self.down:
            raise ConnectionRefusedError("broker unreachable")

    async def receive(self, max_messages: int, timeout: float) -> list[foxtive.Incoming]:
        if self.down:
            raise ConnectionResetError("connection reset by peer")
        if not self.ready:
            await asyncio.sleep(min(timeout, 0.01))
        n = min(max_messages, len(self.ready))
        return [foxtive.Incoming(body=self.ready.popleft()) for _ in range(n)]

    async def ack(self, receipt: Any) -> None:
        pass

    async def requeue(self, receipt: Any) -> None:
        pass

    async def publish(self, body: bytes, headers: Any = None, delay: Any = None,
                      message_id: Any = None) -> str:
        self.ready.append(body)
        return str(len(self.ready))


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    inner = FlakyQueue() if args.broker == "memory" else _brokers.backend(args.broker, "emails")
    backend = foxtive.ResilientBackend(
        inner,
        foxtive.ReconnectStrategy.exponential(initial=0.05, max=1.0, multiplier=2.0, jitter=0.1),
        # foxtive.ReconnectStrategy.fixed(1.0) waits the same every time
    )

    @backend.on_state_change
    def show(old: str, new: str) -> None:
        print(f"backend: {old} → {new} (reconnect attempts so far: {backend.reconnect_attempts})")

    async def send_email(message: foxtive.Message) -> None:
        await asyncio.sleep(0.05)  # SMTP
        print(f"sent {message.text()}")
        if message.text() == "email 4" and isinstance(inner, FlakyQueue):
            print("--- the broker goes away for 0.5 s; other services keep publishing ---")
            inner.down = True
            inner.ready.extend(f"email {i}".encode() for i in range(5, TOTAL))
            asyncio.get_running_loop().call_later(0.5, setattr, inner, "down", False)

    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .with_concurrency_limit(1)
        .add_worker(send_email, id="email")
        .build()
    )
    first = 5 if isinstance(inner, FlakyQueue) else TOTAL  # the rest comes during the outage
    await backend.publish_many([f"email {i}".encode() for i in range(first)])

    run = asyncio.create_task(pool.run_async(backend, handle_signals=False))
    while pool.stats()["processed"] < TOTAL and not run.done():
        await asyncio.sleep(0.05)
    pool.shutdown()
    await run

    print(f"processed {pool.stats()['processed']} of {TOTAL}; state {backend.state}, "
          f"{backend.reconnect_attempts} reconnect attempt(s)")
    await _brokers.cleanup(inner)


if __name__ == "__main__":
    asyncio.run(main())
