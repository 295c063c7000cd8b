"""Child processes: every Python child re-runs an entry script
(``benches/compare.py``, ``compare_tasks.py``, ``compare_postgres.py``) in
one of its child modes, in the interpreter of its kind (this one for
foxtive, the peers venv for the peers); a child that reports a figure
prints it as JSON on its last line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from harness.config import COMPARE_PY
from harness.peers_venv import interpreter


def child(kind: str, script: Path, *args: str) -> list[str]:
    """The command line running ``script`` with ``args`` in ``kind``'s interpreter."""
    return [interpreter(kind), str(script), *args]


def compare_child(kind: str, *args: str) -> list[str]:
    """``benches/compare.py`` in one of its child modes (--publish, --consume, ...)."""
    return child(kind, COMPARE_PY, *args)


def last_json(out: subprocess.CompletedProcess[str], name: str, failed: str = "failed",
              key: str = "") -> Any:
    """The JSON object a child printed on its last line (its ``key`` if one
    is named), or None: then the child's stderr tail goes to ours under
    ``<name>: <failed>``."""
    try:
        obj = json.loads(out.stdout.strip().splitlines()[-1])
        return obj[key] if key else obj
    except (ValueError, IndexError, KeyError):
        print(f"{name}: {failed}\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
