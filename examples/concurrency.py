"""Concurrency control: how many messages are processed at once.

with_concurrency_limit(n) caps the whole pool; a worker's `concurrency`
caps that worker under it. Here 40 emails take 50 ms each (an SMTP round
trip): we measure the peak number in flight and the wall time.

    python examples/concurrency.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import time

import _brokers

import foxtive


class Meter:
    """Counts messages in flight and remembers the peak."""

    def __init__(self) -> None:
        self.now = self.peak = 0

    async def send(self, message: foxtive.Message) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)
        await asyncio.sleep(0.05)  # I/O-bound: the loop runs others meanwhile
        self.now -= 1


class SmtpWorker(foxtive.Worker):
    id = "smtp"
    concurrency = 3  # the SMTP server allows 3 connections

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    async def process(self, message: foxtive.Message) -> None:
        await self.meter.send(message)


async def run(broker: str, label: str, limit: int, worker: object, meter: Meter) -> None:
    backend = _brokers.backend(broker, "emails")
    pool = (
        foxtive.WorkerPoolBuilder("email-pool")
        .with_concurrency_limit(limit)  # pool-wide: at most `limit` at once
        .add_worker(worker)
        .with_backend(backend)
        .build()
    )
    await backend.publish_many([b"email"] * 40)
    t0 = time.monotonic()
    await pool.run_until_idle_async(timeout=60)
    print(f"{label}: processed {pool.stats()['processed']}, peak in flight {meter.peak}, "
          f"{time.monotonic() - t0:.2f} s")
    await _brokers.cleanup(backend)


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    m = Meter()
    await run(args.broker, "pool limit 1         ", 1, m.send, m)
    m = Meter()
    await run(args.broker, "pool limit 20        ", 20, m.send, m)
    m = Meter()
    await run(args.broker, "worker concurrency 3 ", 20, SmtpWorker(m), m)


if __name__ == "__main__":
    asyncio.run(main())
