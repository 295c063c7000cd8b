"""Tasks: the email example, task-style.

Run the worker, then send from anywhere (a web view, a script):

    FOXTIVE_BROKER=redis://127.0.0.1:6379/0 foxtive run tasks_email:app
    FOXTIVE_BROKER=redis://127.0.0.1:6379/0 python examples/tasks_email.py send ann@example.com

With no broker set it sends and runs in one process on the memory backend:

    python examples/tasks_email.py
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import sys

import foxtive

# The broker comes from $FOXTIVE_BROKER (memory:// when run as a demo here).
app = foxtive.App("mail", results=True,
                  broker=os.environ.get("FOXTIVE_BROKER") or "memory://",
                  retry=foxtive.RetryHandler(max_retries=2, initial_backoff=0.01))
QUEUE = os.environ.get("TASKS_EMAIL_QUEUE", "emails")


@dataclasses.dataclass
class Receipt:
    to: str
    sent_at: dt.datetime


@app.task(queue=QUEUE, name="mail.send_welcome", timeout=10.0)
async def send_welcome(to: str, name: str = "there") -> Receipt:
    """Explicit names keep producers and workers in step whatever the module is called."""
    if "@" not in to:
        raise foxtive.PermanentError(f"not an address: {to!r}")
    print(f"Sending 'Welcome, {name}!' to {to}", flush=True)
    return Receipt(to, dt.datetime.now(dt.UTC))


def main(argv: list[str]) -> int:
    if argv[:1] == ["send"]:  # producer only: a worker elsewhere runs it
        for to in argv[1:]:
            handle = send_welcome.send_sync(to, name=to.split("@")[0])
            receipt = handle.result_sync(timeout=30.0)
            print(f"task {handle.id}: sent to {receipt.to} at {receipt.sent_at:%H:%M:%S}")
        app.close()
        return 0
    handles = [send_welcome.send_sync(f"user{i}@example.com", name=f"user{i}") for i in range(3)]
    bad = send_welcome.send_sync("not-an-address")
    app.pool(QUEUE).run_until_idle(timeout=30.0)
    for h in handles:
        print(f"result: {h.result_sync(timeout=1.0).to}")
    try:
        bad.result_sync(timeout=1.0)
    except foxtive.TaskError as e:
        print(f"failed for good: {e.type_name}: {e.message} (attempts: {e.attempts})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
