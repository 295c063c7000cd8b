"""The child side's count of handled ids, shared by every consumer: the
handler calls ``hit``; a watcher thread checks ids (lost, dup), and once
every id was seen, or after ``idle_timeout`` without progress, writes the
result file the parent reads and ends the process."""

from __future__ import annotations

import collections
import json
import os
import threading
import time
from typing import Any

from harness import mode
from harness.accounting import vmrss_mib
from harness.latency import percentiles_ms


class Recorder:
    """Counts ids; a watcher thread writes the result and ends the process."""

    def __init__(self, n: int, result: str, idle_timeout: float,
                 extra: dict[str, Any] | None = None, share: bool = False) -> None:
        self.n = n
        # One of several processes draining one queue: it stops once the
        # queue looks drained (0.5 s without a message after the first) and
        # writes the ids it saw, which the parent merges.
        self.share = share
        self.ids: list[int] = []
        self.result = result
        self.idle_timeout = idle_timeout
        # A deque the watcher empties as it goes (append and popleft are
        # atomic across handler threads): the recorder holds no per-message
        # state, so it does not weigh on the worker's RSS (W6, peak RSS).
        self.hits: collections.deque[int] = collections.deque()
        self.lat: list[float] = []
        self.w6 = mode.W6
        self.rss_before = 0.0
        self.first = 0.0
        self.last = 0.0
        self.extra = extra or {}
        self.at_exit: list[Any] = []  # callables run before the process ends
        threading.Thread(target=self._watch, daemon=True).start()

    def hit(self, i: int, sent: float = 0.0) -> None:
        t = time.time()
        if not self.first:
            self.first = t
        self.last = t
        self.hits.append(i)
        if self.w6 and not self.rss_before:
            self.rss_before = vmrss_mib()
        if sent and sent.__class__ is float:  # tasks-*: the second argument is a str
            self.lat.append(t - sent)

    def _watch(self) -> None:
        seen = bytearray(self.n)
        unique = dups = 0
        progress = time.monotonic()
        while True:
            time.sleep(0.02)
            hits = self.hits
            if hits:
                progress = time.monotonic()
                while hits:
                    i = hits.popleft()
                    if self.share:
                        self.ids.append(i)
                    if 0 <= i < self.n and not seen[i]:
                        seen[i] = 1
                        unique += 1
                    else:
                        dups += 1
            idle = time.monotonic() - progress
            if (unique >= self.n or idle > self.idle_timeout
                    or (self.share and unique and idle > 0.5)):
                break
        if self.w6:  # let the last retries be scheduled, then weigh the worker
            time.sleep(3)
            self.extra.update(rss_before=self.rss_before, rss_after=vmrss_mib())
        with open(self.result, "w") as f:
            pct: dict[str, Any] = dict(percentiles_ms(self.lat))
            if self.share:
                pct["ids"] = self.ids
            json.dump({"first": self.first, "last": self.last, "unique": unique,
                       "dups": dups, "lost": self.n - unique, **pct, **self.extra}, f)
        for fn in self.at_exit:
            fn()
        os._exit(0)
