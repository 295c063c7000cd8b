"""Every example runs to completion as a user would run it: a subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest

import foxtive

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}


def run(script: str, *args: str, timeout: float = 60) -> str:
    """Run examples/<script> with this interpreter; assert exit code 0; return stdout."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True, encoding="utf-8", timeout=timeout, env=ENV, cwd=EXAMPLES.parent,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


# script, arguments, what its output must contain (on the memory backend)
CASES = [
    ("first_worker.py", [], ["Sending 'Welcome!' to user0@example.com",
                             "processed 10, dead-lettered 1",
                             "dead letter: {\"to\": \"not-an-address\"",
                             "teardown: closing the SMTP connection"]),
    ("retries_and_dlq.py", [], ["email 3 sent on attempt 2",
                                "processed 9, failed attempts 7, retried 6, dead-lettered 1",
                                "dead letter: email 7 (ConnectionError: mailbox unavailable)"]),
    ("circuit_breaker.py", [], ["(breaker half_open): sent email",
                                "processed 10, dead-lettered 0, breaker closed after 3 "
                                "transitions"]),
    ("tracing.py", [], ["emails  Sending Welcome! to alice@example.com",
                        "trace=4bf92f3577b34da6a3ce929d0e0e4736",
                        "failed in worker email (attempt 1): PermanentError",
                        "processed 2, dead-lettered 1"]),
    ("multiple_workers.py", [], ["ROUND_ROBIN  processed 30 (send_email: 10, send_email-2: 10, "
                                 "send_email-3: 10)",
                                 "RANDOM       processed 30", "LEAST_LOADED processed 30"]),
    ("concurrency.py", [], ["pool limit 1         : processed 40, peak in flight 1,",
                            "pool limit 20        : processed 40,",
                            "worker concurrency 3 : processed 40, peak in flight 3,"]),
    ("rabbitmq.py", [], ["high priority: password reset (id reset-42",
                         "processed 100 messages from example-emails-"]),
    ("graceful_shutdown.py", ["--demo-signal"], ["sending myself SIGTERM",
                                                 "teardown: ",
                                                 "stopped gracefully: processed "]),
    ("health.py", [], ["before the pool runs:  /health 503",
                       "while it runs:         /health 200 {\"status\":\"healthy\"",
                       "/ready  200", "after shutdown:        /ready  503", "processed 20"]),
    ("metrics.py", [], ['foxtive_worker_messages_processed_total{pool="email-pool",worker="email"',
                        'outcome="success"} 25',
                        'error_type="ConnectionResetError"} 3', "processed 25"]),
    ("rate_limiting.py", [], ["processed 60: 5 at once, then "]),
    ("payment.py", [], ["charged 90 for order A-9 (attempt 2)",
                        "processed 9, retried 1 (a timeout), dead-lettered 1 (declined)",
                        "dead letter: A-10 (CardDeclined"]),
    ("batch_db_updates.py", [], ["batches of [100, 100, 50]: stored 249 rows; processed 249, "
                                 "dead-lettered 1"]),
    ("image_pipeline.py", [], ["download-pool  processed 12, retried 1",
                               "pipeline done: uploaded 12 of 12 images"]),
    ("resilient_backend.py", [], ["backend: connected → reconnecting",
                                  "backend: reconnecting → connected",
                                  "processed 10 of 10"]),
    ("tasks_email.py", [], ["result: user2@example.com",
                            "failed for good: PermanentError: not an address"]),
    ("tasks_payment.py", [], ["order A-9: the gateway hangs; the attempt is cut off after 0.2 s",
                              "charged 90.00 for order A-9",
                              "processed 9, retried 1 (a timeout), dead-lettered 1 (declined)",
                              "results: 9 charges, 454.00 in total (a Decimal, not a float)",
                              "failed for good: CardDeclined: card declined for order A-10 "
                              "(attempts: 1)",
                              'dead letter: payments.charge {"args":["A-10","100.00"],'
                              '"kwargs":{"card":"declined"}} (CardDeclined)']),
    ("tasks_image_pipeline.py", [], ["uploaded https://img.example.com/3.jpg (resized 4096 → 1024)",
                                     "images:downloads  processed 12, retried 1",
                                     "images:resizes    processed 12, retried 0",
                                     "images:uploads    processed 12, retried 0",
                                     "pipeline done: uploaded 12 of 12 images"]),
]


def test_every_example_is_tested() -> None:
    scripts = {p.name for p in EXAMPLES.glob("*.py") if not p.name.startswith("_")}
    assert scripts == {script for script, _, _ in CASES}
    readme = (EXAMPLES / "README.md").read_text()
    assert all(f"`{s}`" in readme for s in scripts)


@pytest.mark.parametrize(("script", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_example_on_the_memory_backend(script: str, args: list[str],
                                       expected: list[str]) -> None:
    out = run(script, *args)
    for text in expected:
        assert text in out, f"{text!r} not in the output of {script}:\n{out}"


def test_rate_limiting_holds_the_rate() -> None:
    out = run("rate_limiting.py")
    rate = int(re.search(r"then (\d+) per second", out).group(1))  # type: ignore[union-attr]
    assert 30 <= rate <= 50, out


def test_graceful_shutdown_runs_until_ctrl_c() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "graceful_shutdown.py")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, encoding="utf-8", env=ENV,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("sent email"):
                break
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    summary = re.search(r"processed (\d+), (\d+) left in the queue", out)
    assert summary is not None, out
    assert int(summary.group(1)) + int(summary.group(2)) == 50
    assert int(summary.group(2)) > 0  # stopped early, the rest is still queued


# ---------------------------------------------------------------- RabbitMQ
@pytest.mark.parametrize(("script", "expected"), [
    ("rabbitmq.py", ["consuming example-emails-", "amqp://guest:***@127.0.0.1:5672",
                     "processed 100 messages from example-emails-", "(rabbitmq)"]),
    ("retries_and_dlq.py", ["processed 9, failed attempts 7, retried 6, dead-lettered 1",
                            "dead letter: email 7 (ConnectionError: mailbox unavailable)"]),
    ("image_pipeline.py", ["download-pool  processed 12, retried 1",
                           "pipeline done: uploaded 12 of 12 images"]),
])
def test_example_on_rabbitmq(script: str, expected: list[str], foxtive_rabbitmq_url: str) -> None:
    out = run(script, "--broker", "rabbitmq")
    for text in expected:
        assert text in out, f"{text!r} not in the output of {script}:\n{out}"
    queues = re.findall(r"example-[a-z-]+-[0-9a-f]{6}", out)
    if queues:  # what it printed, it deleted
        asyncio.run(_assert_deleted(foxtive_rabbitmq_url, set(queues)))


async def _assert_deleted(url: str, queues: set[str]) -> None:
    conn = await aio_pika.connect(url)
    async with conn:
        for name in sorted(queues) + [f"{q}.dlq" for q in sorted(queues)]:
            channel = await conn.channel()
            with pytest.raises(aio_pika.exceptions.ChannelClosed):
                await channel.declare_queue(name, passive=True)


def test_redis_flag(request: pytest.FixtureRequest) -> None:
    """``--broker redis`` runs on Redis Streams when this build has them, else says so."""
    if getattr(foxtive, "RedisStreamBackend", None) is not None:
        request.getfixturevalue("foxtive_redis_url")  # skip (fail in CI) without Redis
        assert "processed 10, dead-lettered 1" in run("first_worker.py", "--broker", "redis")
        return
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "first_worker.py"), "--broker", "redis"],
        capture_output=True, encoding="utf-8", timeout=60, env=ENV,
    )
    assert proc.returncode != 0
    assert "no RedisStreamBackend" in proc.stderr


def test_task_pipeline_under_foxtive_run_on_sqlite(tmp_path: Path) -> None:
    """What tasks_image_pipeline.py's docstring says: ``foxtive run`` runs the
    three stages, ``... send URL...`` only sends, SIGTERM drains to exit 0."""
    env = {**ENV, "FOXTIVE_BROKER": f"sqlite:///{tmp_path}/images.db"}
    worker = subprocess.Popen([sys.executable, "-m", "foxtive", "run", "tasks_image_pipeline:app"],
                              cwd=EXAMPLES, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, encoding="utf-8")
    try:
        urls = [f"https://img.example.com/{i}.jpg" for i in (1, 3, 5)]
        sent = subprocess.run([sys.executable, "tasks_image_pipeline.py", "send", *urls],
                              cwd=EXAMPLES, env=env, capture_output=True, encoding="utf-8",
                              timeout=60)
        assert sent.returncode == 0, sent.stderr
        assert len(re.findall(r"^sent [0-9a-f]{32}: ", sent.stdout, re.M)) == 3
        assert worker.stdout is not None
        uploaded = set()
        for line in worker.stdout:  # the worker's own output: wait for the chain's end
            if line.startswith("uploaded "):
                uploaded.add(line.split()[1])
                if len(uploaded) == len(urls):
                    break
        assert uploaded == set(urls)
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert "503 from the image host -> retried" in err  # /3.jpg, once
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
