"""Tasks: the payment example, task-style (the twin of payment.py).

A charge is a task with typed arguments (`Decimal` travels as a string and
comes back a `Decimal`) and a dataclass result. Payments are critical: a
timeout per attempt (a hung gateway call is cancelled and retried), a low
concurrency limit, and no retry for a declined card (`CardDeclined` is a
`PermanentError`: dead-lettered at once, its handle raises `TaskError`).

Run the worker, then send from anywhere (a web view, a script):

    FOXTIVE_BROKER=redis://127.0.0.1:6379/0 foxtive run tasks_payment:app
    FOXTIVE_BROKER=redis://127.0.0.1:6379/0 python examples/tasks_payment.py send A-1 19.99

With no broker set it sends and runs in one process on the memory backend:

    python examples/tasks_payment.py
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from decimal import Decimal

import foxtive

app = foxtive.App("payments", results=True,
                  broker=os.environ.get("FOXTIVE_BROKER") or "memory://",
                  retry=foxtive.RetryHandler(max_retries=3, initial_backoff=0.05,
                                             max_backoff=0.2))
QUEUE = os.environ.get("TASKS_PAYMENT_QUEUE", "payments")


class CardDeclined(foxtive.PermanentError):
    """Retrying will not help: straight to the dead-letter queue."""


@dataclasses.dataclass
class Charge:
    order: str
    amount: Decimal
    gateway_id: str


_hung: set[str] = set()  # the demo gateway hangs once per "hangs" order


@app.task(queue=QUEUE, name="payments.charge", timeout=0.2)  # seconds per attempt
async def charge(order: str, amount: Decimal, card: str = "ok") -> Charge:
    if card == "hangs" and order not in _hung:
        _hung.add(order)
        print(f"order {order}: the gateway hangs; the attempt is cut off after 0.2 s",
              flush=True)
        await asyncio.sleep(10)
    if card == "declined":
        raise CardDeclined(f"card declined for order {order}")
    await asyncio.sleep(0.01)  # the gateway call
    print(f"charged {amount} for order {order}", flush=True)
    return Charge(order, amount, gateway_id=f"gw-{order.lower()}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["send"]:  # producer only: a worker elsewhere runs it
        order, amount = argv[1], Decimal(argv[2])
        handle = charge.send_sync(order, amount)
        result = handle.result_sync(timeout=30.0)
        print(f"task {handle.id}: charged {result.amount} for {result.order} "
              f"({result.gateway_id})")
        app.close()
        return 0
    handles = [charge.send_sync(f"A-{i}", Decimal(10 * i) + Decimal("0.50")) for i in range(1, 9)]
    handles.append(charge.send_sync("A-9", Decimal("90.00"), card="hangs"))
    declined = charge.send_sync("A-10", Decimal("100.00"), card="declined")

    pool = app.pool(QUEUE, concurrency_limit=10)  # conservative: payments are critical
    pool.run_until_idle(timeout=30.0)

    s = pool.stats()
    print(f"processed {s['processed']}, retried {s['retried']} (a timeout), "
          f"dead-lettered {s['dead_lettered']} (declined)")
    total = sum((h.result_sync(timeout=1.0).amount for h in handles), Decimal(0))
    print(f"results: {len(handles)} charges, {total} in total "
          f"(a {type(total).__name__}, not a float)")
    try:
        declined.result_sync(timeout=1.0)
    except foxtive.TaskError as e:
        print(f"failed for good: {e.type_name}: {e.message} (attempts: {e.attempts})")
    for dead in app.backend(QUEUE).dead_letters():
        print(f"dead letter: {dead.headers['foxtive-task']} {dead.body.decode()} "
              f"({dead.error_type})")
    app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
