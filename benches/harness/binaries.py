"""The Rust ceilings and helpers, built by cargo as foxtive-core examples
(``cargo build --release -p foxtive-core --example NAME``) into
``CARGO_TARGET_DIR``; the release build is preferred."""

from __future__ import annotations

from harness.config import TARGET


def ceiling_binary(name: str = "rabbitmq_ceiling") -> str:
    for profile in ("release", "debug"):
        p = TARGET / profile / "examples" / name
        if p.exists():
            return str(p)
    raise SystemExit(f"build it first: cargo build --release -p foxtive-core --example {name}")
