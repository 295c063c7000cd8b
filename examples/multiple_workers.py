"""Several workers in one pool, and the three load-balancing strategies.

The same 30 messages go through a pool of three workers with each strategy;
we count which worker got what. Every fifth email is slow (a big
attachment): LEAST_LOADED steers new messages away from a worker stuck on one.

    python examples/multiple_workers.py [--broker memory|rabbitmq|redis]
"""

import asyncio
import collections

import _brokers

import foxtive

handled: collections.Counter[str] = collections.Counter()


async def send_email(message: foxtive.Message) -> None:
    handled[message.worker_id or "?"] += 1
    slow = int(message.text()) % 5 == 0
    await asyncio.sleep(0.2 if slow else 0.01)


async def main() -> None:
    args = _brokers.parser(__doc__).parse_args()
    for strategy in foxtive.LoadBalancingStrategy:  # ROUND_ROBIN, RANDOM, LEAST_LOADED
        backend = _brokers.backend(args.broker, f"emails-{strategy.value}")
        pool = (
            foxtive.WorkerPoolBuilder("email-pool")
            .with_strategy(strategy)
            .with_concurrency_limit(6)
            .add_workers([send_email] * 3)  # ids: send_email, send_email-2, send_email-3
            .with_backend(backend)
            .build()
        )
        handled.clear()
        await backend.publish_many([str(i).encode() for i in range(30)])
        await pool.run_until_idle_async(timeout=30)
        counts = ", ".join(f"{w}: {handled[w]}" for w in pool.worker_ids)
        print(f"{strategy.name:<12} processed {pool.stats()['processed']} ({counts})")
        await _brokers.cleanup(backend)


if __name__ == "__main__":
    asyncio.run(main())
