"""A backend written in Python (``foxtive.Backend`` subclass), in-process."""

from __future__ import annotations

from ..kit import BackendKit, DeadRecord
from ..python_backend import ContractPythonBackend


class PythonKit(BackendKit):
    name = "python"
    capabilities = frozenset()

    def __init__(self, queue: str | None = None) -> None:
        super().__init__(queue)
        self._backend = ContractPythonBackend(self.queue)

    def backend(self) -> ContractPythonBackend:
        return self._backend

    def waiting(self) -> int:
        return self._backend.qsize() + self._backend.unacked()

    def dead_letters(self) -> list[DeadRecord]:
        out = []
        for d in self._backend.dlq:
            h = d["headers"]
            out.append(DeadRecord(body=d["body"], message_id=d["id"],
                                  error_type=h.get("x-foxtive-error-type"),
                                  attempts=h.get("x-foxtive-attempts"),
                                  source_queue=h.get("x-foxtive-source-queue"), raw=d))
        return out
