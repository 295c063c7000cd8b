"""The native in-process memory backend; it is its own judge."""

from __future__ import annotations

import foxtive

from ..kit import BackendKit, DeadRecord


class MemoryKit(BackendKit):
    name = "memory"
    capabilities = frozenset()

    def __init__(self, queue: str | None = None) -> None:
        super().__init__(queue)
        self._backend = foxtive.MemoryBackend(self.queue)

    def backend(self) -> foxtive.MemoryBackend:
        return self._backend

    def waiting(self) -> int:
        return self._backend.qsize() + self._backend.unacked()

    def dead_letters(self) -> list[DeadRecord]:
        return [
            DeadRecord(body=d.body, message_id=d.original_id, error_type=d.error_type,
                       attempts=d.attempts, source_queue=d.source_queue,
                       raw={"headers": dict(d.headers)})
            for d in self._backend.dead_letters()
        ]
