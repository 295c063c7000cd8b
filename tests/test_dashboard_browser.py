"""The dashboard in a real browser (Debian's chromium, headless, driven by
selenium through /usr/bin/chromedriver; nothing downloaded): with real Redis
and RabbitMQ the page shows a queue's counts and its K dead letters;
clicking Replay on one puts it back on the broker (redis-py / aio-pika
judge) and the dead count drops by one; Purge asks for confirmation first.
A screenshot goes to docs/dashboard.png; the first render with 10 queues
and 1,000 dead letters is measured; a running schedule shows its row (next
runs, last tick, leader)."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import foxtive
from foxtive import schedules
from foxtive.dashboard import Dashboard

from .dashboard_support import make_dead_letters, publish
from .rabbit_support import URL as AMQP_URL
from .rabbit_support import judge, list_queues, unique
from .redis_support import REDIS_URL, delete_keys, unique_stream

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"
K = 5

pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason="apt-get install -y chromium chromium-driver (see .ci/run)")


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1100", "--force-prefers-reduced-motion"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, timeout: float = 20.0) -> WebDriverWait:
    return WebDriverWait(driver, timeout)


def cell(driver: Any, queue: str, column: str) -> str:
    return str(driver.find_element(
        By.CSS_SELECTOR, f'#queue-table tr[data-queue="{queue}"] .c-{column}').text)


def wait_cell(driver: Any, queue: str, column: str, value: str) -> None:
    wait(driver).until(lambda d: cell(d, queue, column) == value,
                       f"{queue} {column} never showed {value}")


def open_page(driver: Any, board: Dashboard) -> None:
    driver.get(board.url + "/")
    wait(driver).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))


def dead_rows(driver: Any) -> list[Any]:
    return list(driver.find_elements(By.CSS_SELECTOR, "#dl-table tbody tr"))


def replay_one_and_purge(driver: Any, board: Dashboard, queue: str, dead_now: Any,
                         on_broker: Any, screenshot: bool) -> None:
    """The page's part, judged by `dead_now()` (dead letters on the broker)
    and `on_broker()` (messages waiting in the source queue)."""
    open_page(driver, board)
    wait_cell(driver, queue, "ready", "3")
    wait_cell(driver, queue, "dead", str(K))
    assert len(dead_rows(driver)) == K
    waiting = on_broker()
    row = driver.find_element(By.CSS_SELECTOR, '#dl-table tr[data-id="m-1"]')
    row.find_element(By.CSS_SELECTOR, "button.replay").click()
    wait(driver).until(lambda d: "Replayed 1" in d.find_element(By.ID, "status").text)
    wait_cell(driver, queue, "dead", str(K - 1))
    # The broker's own count, as the broker reports it (RabbitMQ's passive
    # declare may trail a committed transaction by a moment).
    wait(driver, 10).until(lambda d: on_broker() == waiting + 1, "replayed message on the broker")
    assert dead_now() == K - 1 and on_broker() == waiting + 1, "back on the broker, once"
    assert len(dead_rows(driver)) == K - 1
    assert not driver.find_elements(By.CSS_SELECTOR, '#dl-table tr[data-id="m-1"]')

    # A body, pretty JSON by default, and its hex view.
    driver.find_element(By.CSS_SELECTOR, '#dl-table tr[data-id="m-3"] button.view').click()
    wait(driver).until(lambda d: '"order": 3' in d.find_element(By.ID, "dl-body").text)
    assert "acme" in driver.find_element(By.ID, "dl-headers").text
    if screenshot:  # the whole page, from the top
        SCREENSHOT.parent.mkdir(exist_ok=True)
        size = driver.get_window_size()
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(size["width"], min(int(height) + 140, 4000))
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(SCREENSHOT))
        driver.set_window_size(size["width"], size["height"])
    driver.find_element(By.CSS_SELECTOR, 'input[name=view][value=hex]').click()
    assert driver.find_element(By.ID, "dl-body").text.startswith("7b 22")  # '{"'

    # Purge: the dialog asks; Cancel changes nothing.
    Select(driver.find_element(By.ID, "f-queue")).select_by_value(queue)
    driver.find_element(By.CSS_SELECTOR, "#dl-filter button[type=submit]").click()
    driver.find_element(By.ID, "purge").click()
    dialog = wait(driver).until(ec.visibility_of_element_located((By.ID, "confirm")))
    assert dialog.get_attribute("open") is not None
    assert not driver.find_element(By.ID, "confirm-ok").is_enabled(), "type the name first"
    driver.find_element(By.ID, "confirm-cancel").click()
    wait(driver).until(lambda d: "cancelled" in d.find_element(By.ID, "status").text)
    assert dead_now() == K - 1
    driver.find_element(By.ID, "purge").click()
    wait(driver).until(ec.visibility_of_element_located((By.ID, "confirm")))
    driver.find_element(By.ID, "confirm-input").send_keys(queue)
    driver.find_element(By.ID, "confirm-ok").click()
    wait(driver).until(lambda d: f"Purged {K - 1}" in d.find_element(By.ID, "status").text)
    wait_cell(driver, queue, "dead", "0")
    assert dead_now() == 0 and dead_rows(driver) == []


def test_redis_queue_replay_and_purge_in_the_browser(browser: Any) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    stream = unique_stream("dash-browser")
    cfg = foxtive.RedisStreamConsumerConfig(stream_name=stream)
    try:
        make_dead_letters(foxtive.RedisStreamBackend(REDIS_URL, cfg), K)
        publish(foxtive.RedisStreamBackend(REDIS_URL, cfg), [b"a", b"b", b"c"])
        with Dashboard(broker=REDIS_URL, queues=[stream], port=0, sample_interval=0.5) as board:
            replay_one_and_purge(browser, board, stream,
                                 dead_now=lambda: r.xlen(f"{stream}:dlq"),
                                 on_broker=lambda: r.xlen(stream), screenshot=True)
    finally:
        delete_keys(r, stream)


def test_rabbitmq_queue_replay_and_purge_in_the_browser(browser: Any) -> None:
    queue = unique("dash-browser")

    async def body() -> None:
        async with judge(queue):
            def judged(name: str) -> Any:  # rabbitmqctl's count of ready messages
                return lambda: list_queues().get(name, (0, 0))[0]

            backend = foxtive.RabbitMqBackend(
                AMQP_URL, foxtive.RabbitMqConsumerConfig(queue_name=queue))
            await asyncio.to_thread(make_dead_letters, backend, K)
            await asyncio.to_thread(publish, backend, [b"a", b"b", b"c"])
            with Dashboard(broker=AMQP_URL, queues=[queue], port=0,
                           sample_interval=0.5) as board:
                await asyncio.to_thread(replay_one_and_purge, browser, board, queue,
                                        judged(f"{queue}.dlq"), judged(queue), False)
            assert list_queues()[queue][0] == 4

    asyncio.run(body())


def test_first_render_10_queues_1000_dead_letters(browser: Any) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    streams = [unique_stream(f"dash-perf-{i}") for i in range(10)]
    try:
        for i, s in enumerate(streams):
            cfg = foxtive.RedisStreamConsumerConfig(stream_name=s)
            make_dead_letters(foxtive.RedisStreamBackend(REDIS_URL, cfg), 100, prefix=f"q{i}")
        with Dashboard(broker=REDIS_URL, queues=streams, port=0) as board:
            times = []
            for _ in range(6):
                open_page(browser, board)
                times.append(float(browser.execute_script("return window.foxtiveFirstRender")))
                assert len(browser.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")) == 10
                assert browser.find_element(By.ID, "dl-count").text == "1000 dead letters"
                assert len(dead_rows(browser)) == 50
        later = sorted(times[1:])
        print(f"\nfirst render, 10 queues + 1,000 dead letters (navigation start -> both "
              f"tables drawn): new browser {times[0]:.0f} ms; next 5 loads: min "
              f"{later[0]:.0f} ms, median {later[2]:.0f} ms, max {later[-1]:.0f} ms; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        # The target is 300 ms; on a machine shared by many builds the bound
        # asserted is looser, and the figures are recorded in benches/RESULTS.md.
        assert later[2] < 2000, times
    finally:
        for s in streams:
            delete_keys(r, s)


def test_token_is_asked_for_then_used(browser: Any) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    stream = unique_stream("dash-token")
    cfg = foxtive.RedisStreamConsumerConfig(stream_name=stream)
    try:
        publish(foxtive.RedisStreamBackend(REDIS_URL, cfg), [b"a", b"b"])
        token = "browser-token-5678"
        with Dashboard(broker=REDIS_URL, queues=[stream], port=0, token=token) as board:
            browser.get(board.url + "/")
            form = wait(browser).until(ec.visibility_of_element_located((By.ID, "token-form")))
            assert "needs its token" in browser.find_element(By.ID, "status").text
            assert not browser.find_elements(By.CSS_SELECTOR, "#queue-table tbody tr")
            browser.find_element(By.ID, "token").send_keys(token)
            form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
            wait(browser).until(
                lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
            wait_cell(browser, stream, "ready", "2")
            assert token not in browser.page_source, "the token is never written into the page"
    finally:
        delete_keys(r, stream)


def test_light_and_dark_follow_the_system(browser: Any) -> None:
    stream = unique_stream("dash-theme")
    with Dashboard(broker=REDIS_URL, queues=[stream], port=0) as board:
        colours = {}
        for scheme in ("light", "dark"):
            browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {
                "features": [{"name": "prefers-color-scheme", "value": scheme}]})
            open_page(browser, board)
            colours[scheme] = browser.execute_script(
                "const s = getComputedStyle(document.body); return [s.backgroundColor, s.color]")
        browser.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": []})
    assert colours["light"] == ["rgb(255, 255, 255)", "rgb(26, 26, 26)"], colours
    assert colours["dark"] == ["rgb(20, 23, 28)", "rgb(232, 234, 237)"], colours


def test_a_running_schedule_shows_its_row(browser: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(schedules.LEASE_ENV, "1")
    r = redis.Redis.from_url(REDIS_URL)
    stream = unique_stream("dash-sched")
    name = f"dash-browser-{os.getpid()}-{stream[-6:]}"
    app = foxtive.App(name, broker=REDIS_URL)

    @app.task(queue=stream, name="dash.tick")
    def tick() -> None: ...

    app.schedule(tick, cron="*/5 * * * * *", tz="Europe/Berlin", name="five-seconds")
    runner = schedules.SchedulerRunner(app).start()
    try:
        with Dashboard(app=app, queues=[stream], port=0) as board:
            open_page(browser, board)
            row = '#schedule-table tr[data-schedule="five-seconds"]'
            wait(browser).until(lambda d: f"pid {os.getpid()}" in d.find_element(
                By.CSS_SELECTOR, row).text, "the schedule's row never named its leader")
            text = browser.find_element(By.CSS_SELECTOR, row).text
            assert "cron */5 * * * * *" in text and "Europe/Berlin" in text, text
            assert len(browser.find_elements(By.CSS_SELECTOR, f"{row} ul.runs li")) == 3
    finally:
        asyncio.run(runner.stop())
        keys = r.keys(f"foxtive:schedules:{{{name}}}:*")
        if keys:
            r.delete(*keys)
        delete_keys(r, stream)
        asyncio.run(app.aclose())
