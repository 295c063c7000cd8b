"""``send`` has the task function's signature (ParamSpec): mypy rejects a
wrong call and accepts a right one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SOURCE = textwrap.dedent("""
    import foxtive

    app = foxtive.App("typing", broker="memory://")

    @app.task(queue="reports")
    def build_report(report_id: int, title: str = "") -> dict[str, int]:
        return {{"id": report_id}}

    @app.task
    async def send_email(to: str, subject: str) -> None: ...

    async def main() -> None:
        h: foxtive.TaskHandle = await send_email.send("a@x.io", subject="Hi")
        build_report.send_sync(1, title="t")
        n: dict[str, int] = build_report(2)
        await send_email.options(delay=1.0).send("a@x.io", "Hi")
        {bad}
""")


def run_mypy(tmp_path: Path, bad: str) -> tuple[int, str]:
    path = tmp_path / "tasks_user.py"
    path.write_text(SOURCE.format(bad=bad))
    out, err, status = mypy_api.run([str(path), "--strict", "--no-incremental",
                                     "--cache-dir", str(tmp_path / ".mypy_cache")])
    return status, out + err


def test_mypy_accepts_right_calls(tmp_path: Path) -> None:
    status, out = run_mypy(tmp_path, "pass")
    assert status == 0, out


@pytest.mark.parametrize("bad", [
    'await send_email.send("a@x.io", subject=3)',
    'build_report.send_sync("one")',
    'await send_email.options(delay=1.0).send("a@x.io")',
    'build_report.send_sync(1, colour="red")',
])
def test_mypy_rejects_wrong_arguments(tmp_path: Path, bad: str) -> None:
    status, out = run_mypy(tmp_path, bad)
    assert status == 1, out
    assert "tasks_user.py:18: error" in out, out
