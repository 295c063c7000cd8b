"""A worker process for the contract's cross-process cases.

    python -m tests.contract.worker KIT QUEUE [--delay S] [--concurrency N]
        [--fail-below N] [--retry-delay S]

It builds its backend through the kit (``kit.worker_backend()``) and prints
one line per event to stdout, written before the message is settled:
``start <body> <attempt>``, ``fail <body> <attempt>``, ``done <body> <attempt>``.
SIGTERM stops it gracefully (``pool.run``)."""

from __future__ import annotations

import argparse
import asyncio
import os

import foxtive

from .kit import load_kits


def say(line: str) -> None:
    os.write(1, (line + "\n").encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kit")
    ap.add_argument("queue")
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--concurrency", type=int, default=10)
    ap.add_argument("--fail-below", type=int, default=0,
                    help="fail (RetryableError) while message.attempt is below this")
    ap.add_argument("--retry-delay", type=float, default=0.5)
    args = ap.parse_args()
    kit = load_kits()[args.kit](args.queue)

    async def handler(message: foxtive.Message) -> None:
        body = message.body.decode()
        say(f"start {body} {message.attempt}")
        if args.delay:
            await asyncio.sleep(args.delay)
        if message.attempt < args.fail_below:
            say(f"fail {body} {message.attempt}")
            raise foxtive.RetryableError("not yet", delay=args.retry_delay)
        say(f"done {body} {message.attempt}")

    pool = (foxtive.WorkerPoolBuilder(f"contract-{args.kit}")
            .add_worker(handler, id="contract")
            .with_concurrency_limit(args.concurrency)
            .with_middleware(foxtive.RetryHandler(max_retries=5, initial_backoff=0.05,
                                                  max_backoff=0.2, jitter=False))
            .with_shutdown_timeout(10.0)
            .build())
    say("ready")
    pool.run(kit.worker_backend())
    say("stopped")


if __name__ == "__main__":
    main()
