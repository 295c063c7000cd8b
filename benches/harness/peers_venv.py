"""The peers' venv, ``benches/.peers-venv``: created from
``requirements-peers.txt`` on first use (and again when that file changes),
and which interpreter runs a contender of each kind."""

from __future__ import annotations

import subprocess
import sys

from harness.config import HERE, PEER, PEERS_PY, PEERS_VENV


def ensure_peers_venv() -> None:
    marker = PEERS_VENV / ".installed"
    req = HERE / "requirements-peers.txt"
    if marker.exists() and marker.read_text() == req.read_text():
        return
    print(f"creating {PEERS_VENV} from {req.name} (a few minutes, once)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    subprocess.run([str(PEERS_PY), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    marker.write_text(req.read_text())


def interpreter(kind: str) -> str:
    """foxtive contenders run in this interpreter, peers in the peers venv."""
    return str(PEERS_PY) if kind == PEER else sys.executable


def peers_have(module: str) -> bool:
    """Whether the peers venv can import ``module``."""
    return subprocess.run([str(PEERS_PY), "-c", f"import {module}"],
                          capture_output=True).returncode == 0
