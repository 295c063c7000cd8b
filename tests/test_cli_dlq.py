"""`foxtive dlq list|show|replay|purge` against a FileDLQ."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import foxtive

from .conftest import fast_retries


def fill(path: Path, n: int) -> None:
    store = foxtive.FileDLQ(path)
    memory = foxtive.MemoryBackend("orders")
    memory.publish_many_sync([f"order-{i}".encode() for i in range(n)])

    async def handler(m: foxtive.Message) -> None:
        raise foxtive.PermanentError(f"cannot ship {m.body.decode()}")

    retry = fast_retries(0).with_dead_letter_queue(store)
    pool = foxtive.WorkerPoolBuilder("p").with_middleware(retry).add_worker(handler, id="h").build()
    assert pool.run_until_idle(memory, timeout=10)
    assert len(store) == n


def foxtive_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "foxtive", "--log-level", "ERROR", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=60)


def test_list_show_replay_purge(tmp_path: Path) -> None:
    path = tmp_path / "dead.jsonl"
    fill(path, 3)
    listed = foxtive_cli("dlq", "list", "--file", str(path), "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    records = json.loads(listed.stdout)
    assert len(records) == 3 and records[0]["error_type"] == "PermanentError"
    first = records[0]["original_id"]
    shown = foxtive_cli("dlq", "show", first, "--file", str(path), cwd=tmp_path)
    assert json.loads(shown.stdout)[0]["body"] == "order-0"
    (tmp_path / "target_app.py").write_text(textwrap.dedent("""
        import foxtive
        import pathlib
        OUT = pathlib.Path(__file__).with_name("replayed.txt")

        class Recorder(foxtive.Backend):
            async def publish(self, body, headers=None, delay=None, message_id=None):
                with OUT.open("a") as f:
                    f.write(f"{message_id} {body.decode()}\\n")
                return message_id or ""

        backend = Recorder()
    """))
    replayed = foxtive_cli("dlq", "replay", "--file", str(path), "--to", "target_app:backend",
                           cwd=tmp_path)
    assert replayed.returncode == 0, replayed.stderr
    assert "replayed 3" in replayed.stdout and "3/3" in replayed.stderr
    lines = (tmp_path / "replayed.txt").read_text().splitlines()
    assert sorted(line.split()[1] for line in lines) == ["order-0", "order-1", "order-2"]
    assert len(foxtive.FileDLQ(path)) == 0
    fill(path, 2)
    refused = foxtive_cli("dlq", "purge", "--file", str(path), cwd=tmp_path)
    assert refused.returncode == 2 and "--yes" in refused.stderr
    purged = foxtive_cli("dlq", "purge", "--file", str(path), "--yes", cwd=tmp_path)
    assert "purged 2" in purged.stdout and len(foxtive.FileDLQ(path)) == 0


def test_dlq_needs_exactly_one_store(tmp_path: Path) -> None:
    res = foxtive_cli("dlq", "list", cwd=tmp_path)
    assert res.returncode == 2 and "exactly one of" in res.stderr
