"""Payment processing: timeouts and a circuit breaker around a payment gateway.

Payments are critical: a low concurrency limit, a timeout per attempt (a
hung gateway call is cancelled and retried), a circuit breaker that stops
calling a gateway that keeps failing, and no retry for a declined card
(should_retry says no; PermanentError would do the same).

    python examples/payment.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import json

import _brokers

import foxtive


class CardDeclined(Exception):
    pass


class PaymentWorker(foxtive.Worker):
    id = "payment-worker"
    timeout = 0.2  # seconds per attempt; TimeoutMiddleware sets it for every worker

    def __init__(self) -> None:
        self.charged: list[str] = []

    async def process(self, message: foxtive.Message) -> None:
        payment = message.json()
        if payment["card"] == "hangs" and message.attempt == 1:
            await asyncio.sleep(10)  # the gateway hangs: cut off after 0.2 s
        if payment["card"] == "declined":
            raise CardDeclined(f"card declined for order {payment['order']}")
        await asyncio.sleep(0.01)  # the gateway call
        self.charged.append(payment["order"])
        print(f"charged {payment['amount']} for order {payment['order']} "
              f"(attempt {message.attempt})")

    def should_retry(self, message: foxtive.Message, error: BaseException,
                     info: foxtive.RetryInfo) -> bool:
        return not isinstance(error, CardDeclined)  # retrying will not help


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "payments")
    worker = PaymentWorker()
    pool = (
        foxtive.WorkerPoolBuilder("payment-pool")
        .with_concurrency_limit(10)  # conservative: payments are critical
        .with_middleware(foxtive.TimeoutMiddleware(seconds=0.5))  # default; the worker's wins
        .with_middleware(foxtive.CircuitBreakerMiddleware(failure_threshold=5, reset_timeout=0.3))
        .with_middleware(foxtive.RetryHandler(max_retries=3, initial_backoff=0.05,
                                              max_backoff=0.2))
        .add_worker(worker)
        .with_backend(backend)
        .build()
    )
    payments = [{"order": f"A-{i}", "amount": 10 * i, "card": "ok"} for i in range(1, 9)]
    payments.append({"order": "A-9", "amount": 90, "card": "hangs"})
    payments.append({"order": "A-10", "amount": 100, "card": "declined"})
    await backend.publish_many([json.dumps(p).encode() for p in payments])

    await pool.run_until_idle_async(timeout=30)

    s = pool.stats()
    print(f"processed {s['processed']}, retried {s['retried']} (a timeout), "
          f"dead-lettered {s['dead_lettered']} (declined), breaker {s['circuit_breaker']}")
    for body, error in await _brokers.dead_letters(backend):
        print(f"dead letter: {json.loads(body)['order']} ({error})")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
