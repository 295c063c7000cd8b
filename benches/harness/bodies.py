"""The raw contenders' message bodies: ``m-<i>:xxx`` of BODY_SIZE bytes
(W4: ``m-<i>:<send time>:xxx``), and the id and send time read back from
them (or from a framework's plain integer argument)."""

from __future__ import annotations

from harness.config import BODY_SIZE


def body_for(i: int) -> bytes:
    head = b"m-%d:" % i
    return head + b"x" * (BODY_SIZE - len(head))


def sent_of(raw: bytes | str) -> float:
    """W4 bodies are ``m-<i>:<time.time()>:xxx``; others carry no send time."""
    if isinstance(raw, str):
        raw = raw.encode()
    parts = raw.split(b":", 2)
    try:
        return float(parts[1]) if len(parts) == 3 else 0.0
    except ValueError:
        return 0.0


def id_of(raw: bytes | str) -> int:
    if isinstance(raw, str):
        raw = raw.encode()
    return int(raw.split(b":", 1)[0][2:]) if raw.startswith(b"m-") else int(raw)
