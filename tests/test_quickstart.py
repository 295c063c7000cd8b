"""The README's quick start, run as written: its blocks are taken from
README.md by their ``<!-- quickstart: NAME -->`` markers (so this breaks when
the README drifts), written to an empty directory, and run there with no
broker configured: the SQLite default file, ``foxtive run tasks:app`` in one
process, sends from others, SIGTERM drains it to exit code 0.

FastAPI and Django need not be installed: their views are imported and
called as the frameworks would call them; when a framework is missing, a
stand-in module gives the one name the block imports (the decorator returns
the view unchanged; ``JsonResponse`` keeps its data), so the foxtive code the
views run is the real one."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import foxtive

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = re.compile(r"<!-- quickstart: (\S+) -->\n```(\w+)\n(.*?)```", re.S)

STANDINS = {
    "fastapi": """
class FastAPI:
    def post(self, path):
        return lambda view: view
""",
    "django/__init__": "",
    "django/http": """
class JsonResponse:
    def __init__(self, data):
        self.data = data
""",
}


def blocks() -> dict[str, tuple[str, str]]:
    """``{name: (language, code)}`` of every marked block of the README."""
    found = {name: (lang, code) for name, lang, code in MARKER.findall(README.read_text())}
    assert set(found) == {"tasks.py", "run", "fastapi_view.py", "django_view.py", "send.py"}, \
        f"README quick start markers changed: {sorted(found)}"
    return found


def python(cwd: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, f"{args}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    code = blocks()
    for name, (lang, text) in code.items():
        if lang == "python":
            (tmp_path / name).write_text(text)
    standins = tmp_path / "standins"
    for module, text in STANDINS.items():
        top = module.split("/")[0]
        if importlib.util.find_spec(top) is None:
            path = standins / f"{module}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    [command] = [line for line in code["run"][1].splitlines() if line.startswith("foxtive ")]
    argv = command.split()
    env = {k: v for k, v in os.environ.items() if k != "FOXTIVE_BROKER"}  # no broker at all
    env.update(PYTHONUNBUFFERED="1", PYTHONPATH=f"{tmp_path}{os.pathsep}{standins}")
    foxtive_cli = Path(sys.executable).parent / argv[0]  # the installed `foxtive` command
    worker = subprocess.Popen([str(foxtive_cli), *argv[1:]], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # A script (send_sync + result_sync, in a process of its own).
        assert python(tmp_path, env, "send.py").strip() == "welcome sent to ann@example.com"
        # The FastAPI view's path: async send + await result, on the caller's loop.
        out = python(tmp_path, env, "-c", "import asyncio, json, fastapi_view; "
                     "print(json.dumps(asyncio.run(fastapi_view.signup('bob@example.com'))))")
        reply = json.loads(out)
        assert reply["result"] == "welcome sent to bob@example.com"
        assert re.fullmatch(r"[0-9a-f]{32}", reply["task_id"])
        # The Django view's path: send_sync + result_sync from a thread with no loop.
        out = python(tmp_path, env, "-c", "import json, threading, types, django_view\n"
                     "request = types.SimpleNamespace(POST={'email': 'cy@example.com'})\n"
                     "box = []\n"
                     "t = threading.Thread(target=lambda: box.append("
                     "django_view.signup(request).data))\n"
                     "t.start(); t.join()\n"
                     "print(json.dumps(box[0]))")
        assert json.loads(out)["result"] == "welcome sent to cy@example.com"
        # The default broker is the SQLite file in the working directory.
        assert (tmp_path / "foxtive.db").is_file()
        assert worker.poll() is None, "the worker exited early"
        # SIGTERM while tasks are arriving: the worker drains and exits 0, and
        # nothing is lost (what it did not take is still in the file).
        sent = python(tmp_path, env, "-c", "from tasks import send_welcome\n"
                      "for i in range(20):\n"
                      "    print(send_welcome.send_sync(f'u{i}@example.com').id)").split()
        assert len(sent) == 20
        worker.send_signal(signal.SIGTERM)
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "Traceback" not in err, err
        out = python(tmp_path, env, "-c", "import sys, foxtive\n"
                     "from tasks import app, send_welcome\n"
                     "assert app.run_until_idle(timeout=30)\n"
                     "for task_id in sys.argv[1:]:\n"
                     "    handle = foxtive.TaskHandle(task_id, send_welcome.name, "
                     "send_welcome.queue, app)\n"
                     "    print(handle.result_sync(timeout=5))", *sent)
        assert out.splitlines() == [f"welcome sent to u{i}@example.com" for i in range(20)]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()


def test_a_bad_address_fails_for_good(tmp_path: Path) -> None:
    """The quick start's PermanentError: no worker process needed to see the
    handle raise TaskError (the app drains in the sending process)."""
    (tmp_path / "tasks.py").write_text(blocks()["tasks.py"][1])
    env = {k: v for k, v in os.environ.items() if k != "FOXTIVE_BROKER"}
    env.update(PYTHONPATH=str(tmp_path))
    out = python(tmp_path, env, "-c", """
import foxtive
from tasks import app, send_welcome
handle = send_welcome.send_sync("not-an-address")
assert app.run_until_idle(timeout=30)
try:
    handle.result_sync(timeout=5)
except foxtive.TaskError as e:
    print(e.type_name, e.attempts, e.message)
[dead] = app.backend("default").dead_letters()
print(dead.error_type, dead.headers["foxtive-task"])
""")
    assert out.splitlines() == ["PermanentError 1 not an address: 'not-an-address'",
                                "PermanentError tasks.send_welcome"]


@pytest.fixture(autouse=True)
def _sqlite_results(tmp_path: Path) -> None:
    """``results=True`` on the SQLite default needs the SQL result store
    (issue 14, "Results", being built next to this): until this build has
    it, these tests are xfailed here; once it has, they run in full."""
    try:
        probe = foxtive.App("probe", broker=f"sqlite:///{tmp_path}/probe.db", results=True)
    except foxtive.ConfigError as e:
        pytest.xfail(f"no SQLite result store in this build yet: {e}")
    probe.close()
