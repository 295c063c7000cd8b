"""Rate limiting: don't overwhelm an external service.

RateLimitMiddleware(per_second, burst) lets at most `per_second` messages a
second reach the handlers, in bursts of up to `burst`. Early messages wait
for a permit; none fails for being early. With redis_url=... every process
sharing the key shares one budget.

    python examples/rate_limiting.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import time

import _brokers

import foxtive

stamps: list[float] = []


async def call_api(message: foxtive.Message) -> None:
    stamps.append(time.monotonic())


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    backend = _brokers.backend(args.broker, "api-calls")
    pool = (
        foxtive.WorkerPoolBuilder("api-pool")
        .with_middleware(foxtive.RateLimitMiddleware(per_second=40, burst=5))
        .add_worker(call_api, id="api")
        .with_backend(backend)
        .build()
    )
    await backend.publish_many([b"call"] * 60)
    await pool.run_until_idle_async(timeout=30)

    burst = sum(1 for t in stamps if t - stamps[0] < 0.01)  # let through at once
    rate = (len(stamps) - burst) / (stamps[-1] - stamps[burst - 1])  # then, steadily
    print(f"processed {pool.stats()['processed']}: {burst} at once, then {rate:.0f} per second "
          f"(limit 40/s, burst 5), {stamps[-1] - stamps[0]:.2f} s in all")
    await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
