"""A process that forks while its event loop holds its own connection to
Redis (``await task.send`` on Redis writes on it): the child sends on a
connection of its own, and its exit (after ``App.close()``) leaves the
parent's connection open and in step. Judge: redis-py (CLIENT LIST, the
stream, the records)."""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest
import redis

import foxtive

from .redis_support import REDIS_URL, delete_keys, own_clients, status_in


def senders(client: redis.Redis) -> set[int]:
    """This process's loop connections (other tests' processes share the Redis)."""
    return {int(c["id"]) for c in own_clients(client)}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_fork_leaves_the_parents_loop_connection_in_step(rclient: redis.Redis) -> None:
    queue = f"foxtive-test:loopfork:{uuid.uuid4().hex[:12]}"
    app = foxtive.App("loopfork", broker=REDIS_URL, results=True, result_ttl=60)

    @app.task(queue=queue, name="loopfork.noop")
    async def noop(n: int) -> None: ...

    loop = asyncio.new_event_loop()
    ids: list[str] = []
    try:
        before = senders(rclient)
        ids.append(loop.run_until_complete(noop.send(1)).id)
        parent = senders(rclient) - before
        assert len(parent) == 1, "the parent's loop opened one connection"
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its own loop, a send, App.close(), leave
            code = 1
            try:
                async def child() -> str:
                    return (await noop.send(2)).id
                task_id = asyncio.run(child())
                app.close()
                os.write(done_w, task_id.encode() + b"\n")
                code = 0
            finally:
                os._exit(code)
        os.close(done_w)
        with os.fdopen(done_r) as r:
            ids.append(r.readline().strip())
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert ids[1], "the child sent its task"
        # The parent goes on with the loop and connection it had: the same
        # connection (not reopened), every reply still matched to its send.
        async def twenty() -> list[str]:
            # A connection the child broke (its reader unregistered from the
            # epoll set parent and child share, say) would leave these
            # waiting for replies the loop never reads, then sent again
            # through the runtime after REPLY_TIMEOUT (10 s): not in step.
            sends = asyncio.gather(*(noop.send(10 + i) for i in range(20)))
            handles = await asyncio.wait_for(sends, 5)
            return [h.id for h in handles]
        ids.extend(loop.run_until_complete(twenty()))
        assert parent <= senders(rclient), "the parent's connection survived the child's close"
        assert rclient.xlen(queue) == 22
        assert all(status_in(rclient, i) == "pending" for i in ids)
    finally:
        loop.run_until_complete(app.aclose())
        loop.close()
        delete_keys(rclient, queue)
        if ids:
            rclient.delete(*(f"foxtive:result:{i}" for i in ids))
