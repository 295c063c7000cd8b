"""Task results on NATS JetStream KV (``App(broker="nats://...", results=True)``).

* One bucket per app, ``foxtive_results_<app>`` (characters other than
  letters, digits, ``-`` and ``_`` become ``_``), history 1, its ``max_age``
  the app's ``result_ttl``: the server expires a record ``result_ttl``
  seconds after its last write, as the Redis store's ``PX`` does.
* The key is the task id when it is a valid KV key, else ``x.`` and the
  id's UTF-8 in hex (tick ids hold ``@`` and ``:``); ids starting with
  ``x.`` are encoded too, so no two ids share a key.
* The record is the JSON of :mod:`foxtive.results`.
* ``wait`` watches the key (a JetStream consumer on its subject, last
  value first): the final write is pushed to the waiter, nothing polls.

It talks to NATS from Python through nats-py (``pip install 'foxtive[nats]'``),
as the Redis store does through redis-py. Sync callers (``send_sync``,
``result_sync``) go through one connection on a loop thread of the store's own.

Credentials are those of :class:`foxtive.NatsBackend`: in the URL
(``user:password@``, ``token@``) or ``token=``, ``nkey_file=`` (an nkey seed
file; nats-py needs the ``nkeys`` package for it), ``creds_file=`` (a
``.creds`` file). An app whose broker is a factory of ``NatsBackend`` keeps
its results with that backend's credentials (:meth:`NatsResultStore.for_backend`).
They are never shown: the repr and the errors carry the redacted URL only.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import weakref
from collections.abc import Coroutine
from typing import Any, TypeVar

import msgspec

from . import _core
from .errors import ConfigError
from .nats import NatsBackend
from .results import FINAL, ResultStore, _outcome

__all__ = ["NatsResultStore", "bucket_for", "key_for"]

_T = TypeVar("_T")
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder()

#: Connection attempts before the store's first connection gives up.
_FIRST_ATTEMPTS = 3

#: A KV key: subject tokens of these characters (no empty token, no wildcard).
_VALID_KEY = re.compile(r"[-/_=a-zA-Z0-9]+(\.[-/_=a-zA-Z0-9]+)*")


def bucket_for(app: str) -> str:
    """The results bucket of app ``app``."""
    return "foxtive_results_" + "".join(
        c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in app)


def key_for(task_id: str) -> str:
    """The KV key of ``task_id`` (one key per id, see the module docs)."""
    if _VALID_KEY.fullmatch(task_id) and not task_id.startswith("x."):
        return task_id
    return "x." + task_id.encode().hex()


def _final(raw: bytes | None) -> dict[str, Any] | None:
    if not raw:
        return None
    record: dict[str, Any] = _dec.decode(raw)
    return record if record.get("status") in FINAL else None


class _Side:
    """One loop's connection and bucket."""

    def __init__(self, nc: Any, kv: Any) -> None:
        self.nc, self.kv = nc, kv


class NatsResultStore(ResultStore):
    """Results in a JetStream KV bucket; waiting watches the key."""

    def __init__(self, url: str, ttl: float, app: str, *, token: str | None = None,
                 nkey_file: str | None = None, creds_file: str | None = None) -> None:
        try:
            import nats  # noqa: F401
        except ImportError:  # pragma: no cover - depends on the environment
            raise ConfigError("results on NATS need nats-py: pip install 'foxtive[nats]'"
                              ) from None
        self.url = url
        self.ttl = ttl
        self.bucket = bucket_for(app)
        # nats-py's own keywords: the token, an nkey seed file, a .creds file.
        self._auth: dict[str, str] = {k: v for k, v in (
            ("token", token), ("nkeys_seed", nkey_file), ("user_credentials", creds_file),
        ) if v is not None}
        # nats-py connections belong to the loop that made them.
        self._sides: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Side] = (
            weakref.WeakKeyDictionary())
        self._opening = threading.Lock()
        self._thread: threading.Thread | None = None
        self._thread_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def for_backend(cls, backend: NatsBackend, ttl: float, app: str) -> NatsResultStore:
        """A store on ``backend``'s server, connecting with its URL and
        credentials (token, nkey file, creds file)."""
        c = backend._credentials
        return cls(c.url, ttl, app, token=c.token, nkey_file=c.nkey_file,
                   creds_file=c.creds_file)

    def __repr__(self) -> str:
        return f"NatsResultStore(url={_core.redact_url(self.url)!r}, bucket={self.bucket!r})"

    async def _side(self) -> _Side:
        loop = asyncio.get_running_loop()
        side = self._sides.get(loop)
        if side is None:
            side = self._sides[loop] = await self._open()
        return side

    async def _open(self) -> _Side:
        import nats
        from nats.js.api import KeyValueConfig, StorageType
        from nats.js.errors import BadRequestError, BucketNotFoundError

        try:
            # A few attempts at first (nats-py would retry refused
            # credentials for good), then reconnects without end.
            nc = await nats.connect(self.url, connect_timeout=5, name="foxtive results",
                                    max_reconnect_attempts=_FIRST_ATTEMPTS, **self._auth)
            nc.options["max_reconnect_attempts"] = -1
        except Exception as e:
            # The client's text may quote the URL: only its type is shown.
            raise ConnectionError(f"results on NATS {_core.redact_url(self.url)}: "
                                  f"cannot connect ({type(e).__name__})") from None
        js = nc.jetstream()
        try:
            kv = await js.key_value(self.bucket)
        except BucketNotFoundError:
            try:
                kv = await js.create_key_value(KeyValueConfig(
                    bucket=self.bucket, history=1, ttl=self.ttl, storage=StorageType.FILE,
                    description="foxtive task results"))
            except BadRequestError:  # another process created it meanwhile
                kv = await js.key_value(self.bucket)
        else:
            await self._keep_ttl(js)
        return _Side(nc, kv)

    async def _keep_ttl(self, js: Any) -> None:
        """An existing bucket takes this app's ``result_ttl`` (a redeploy
        that changes it needs no manual cleanup)."""
        info = await js.stream_info(f"KV_{self.bucket}")
        if info.config.max_age is not None and abs(info.config.max_age - self.ttl) < 1e-3:
            return
        await js.update_stream(info.config.evolve(max_age=self.ttl))

    async def _put(self, task_ids: list[str], record: dict[str, Any]) -> None:
        kv = (await self._side()).kv
        value = _enc.encode(record)
        await asyncio.gather(*(kv.put(key_for(t), value) for t in task_ids))

    async def mark(self, task_id: str, status: str) -> None:
        await self._put([task_id], {"status": status})

    async def mark_many(self, task_ids: list[str], status: str) -> None:
        await self._put(task_ids, {"status": status})

    def mark_sync(self, task_ids: list[str], status: str) -> None:
        self._in_thread(self._put(task_ids, {"status": status}))

    async def mark_new(self, task_id: str, status: str) -> None:
        """A KV ``create``: the server refuses it when the key holds a live
        record (after a deduplicated send, what is there stays)."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = (await self._side()).kv
        with contextlib.suppress(KeyWrongLastSequenceError):
            await kv.create(key_for(task_id), _enc.encode({"status": status}))

    def mark_new_sync(self, task_id: str, status: str) -> None:
        self._in_thread(self.mark_new(task_id, status))

    async def finish(self, task_id: str, record: dict[str, Any]) -> None:
        await self._put([task_id], record)

    async def _get(self, task_id: str) -> bytes | None:
        from nats.js.errors import KeyNotFoundError

        kv = (await self._side()).kv
        try:
            entry = await kv.get(key_for(task_id))
        except KeyNotFoundError:  # never written, expired, or deleted
            return None
        value: bytes | None = entry.value
        return value

    async def status(self, task_id: str) -> str:
        raw = await self._get(task_id)
        return "unknown" if not raw else str(_dec.decode(raw)["status"])

    async def wait(self, task_id: str, timeout: float | None) -> Any:
        record = _final(await self._get(task_id))
        if record is not None:
            return _outcome(record)
        if timeout is not None and timeout <= 0:
            raise TimeoutError(f"task {task_id}: no result yet")
        kv = (await self._side()).kv
        watcher = await kv.watch(key_for(task_id))
        try:
            async with asyncio.timeout(timeout):
                # The last value first (or None when there is none), then
                # every later write, pushed by the server.
                async for entry in watcher:
                    if entry is None:
                        continue
                    record = _final(entry.value)
                    if record is not None:
                        return _outcome(record)
        except TimeoutError:
            raise TimeoutError(f"task {task_id}: no result within {timeout} s") from None
        finally:
            await watcher.stop()
        raise TimeoutError(f"task {task_id}: the watch ended")  # pragma: no cover

    def wait_sync(self, task_id: str, timeout: float | None) -> Any:
        return self._in_thread(self.wait(task_id, timeout))

    def _in_thread(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the store's own loop thread (started on first use)
        and wait for it: sync callers, including code on another running loop."""
        with self._opening:
            if self._thread_loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, daemon=True,
                                          name="foxtive-nats-results")
                thread.start()
                self._thread, self._thread_loop = thread, loop
            loop = self._thread_loop
        return asyncio.run_coroutine_threadsafe(coro, loop).result()

    async def close(self) -> None:
        try:
            side = self._sides.pop(asyncio.get_running_loop(), None)
            if side is not None:
                await side.nc.close()
        finally:
            with self._opening:
                loop, thread = self._thread_loop, self._thread
                self._thread_loop = self._thread = None
            if loop is not None and thread is not None:
                side = self._sides.pop(loop, None)
                if side is not None:
                    asyncio.run_coroutine_threadsafe(side.nc.close(), loop).result(5)
                loop.call_soon_threadsafe(loop.stop)
                await asyncio.to_thread(thread.join, 5)
                loop.close()
