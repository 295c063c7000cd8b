"""Redis Streams on 127.0.0.1:6379 (or FOXTIVE_REDIS_URL); judged by redis-py."""

from __future__ import annotations

from typing import Any

import redis

import foxtive

from ...redis_support import REDIS_URL, redis_answers
from ..kit import CROSS_PROCESS, DROP_CONNECTION, BackendKit, DeadRecord, local_ports

#: The judge's connections carry this name, so dropping foxtive's never drops them.
JUDGE_NAME = "foxtive-contract-judge"


class RedisStreamsKit(BackendKit):
    name = "redis_streams"
    capabilities = frozenset({CROSS_PROCESS, DROP_CONNECTION})

    def __init__(self, queue: str | None = None) -> None:
        super().__init__(queue)
        self.r = redis.Redis.from_url(REDIS_URL, client_name=JUDGE_NAME)

    def available(self) -> str | None:
        return None if redis_answers(self.r) else f"no Redis at {REDIS_URL}"

    def backend(self) -> foxtive.RedisStreamBackend:
        # A short claim_idle: a SIGKILLed worker's entries come back within seconds.
        config = foxtive.RedisStreamConsumerConfig(
            stream_name=self.queue, group_name="contract", block_ms=200, claim_idle=1.0)
        return foxtive.RedisStreamBackend(REDIS_URL, config)

    def waiting(self) -> int:
        # Acked entries are deleted (delete_on_ack): what is in the stream is
        # ready or pending; delayed messages and retries wait in {stream}:delayed.
        return int(self.r.xlen(self.queue)) + int(self.r.zcard(f"{self.queue}:delayed"))

    def dead_letters(self) -> list[DeadRecord]:
        out = []
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.r.xrange(  # type: ignore[assignment]
            f"{self.queue}:dlq")
        for _entry_id, fields in entries:
            f: dict[str, Any] = {k.decode(): v for k, v in fields.items()}

            def text(key: str, f: dict[str, Any] = f) -> str | None:
                v = f.get(key)
                return None if v is None else bytes(v).decode()

            attempts = text("attempts")
            out.append(DeadRecord(body=bytes(f.get("body", b"")), message_id=text("id"),
                                  error_type=text("error_type"),
                                  attempts=None if attempts is None else int(attempts),
                                  source_queue=text("source"), raw=f))
        return out

    def drop_connections(self, pid: int) -> int:
        ports = local_ports(pid, 6379)
        closed = 0
        for client in self.r.client_list():
            port = int(str(client["addr"]).rsplit(":", 1)[1])
            if port in ports and client.get("name") != JUDGE_NAME:
                closed += int(self.r.client_kill_filter(_id=client["id"]))
        return closed

    def cleanup(self) -> None:
        keys = list(self.r.scan_iter(match=f"{self.queue}*", count=1000))
        if keys:
            self.r.delete(*keys)
        self.r.close()
