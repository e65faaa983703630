"""The web console: a device page with a day of 1m windows, timed in a real browser, and the
console's idle resident memory.

Targets: the first chart in < 1 s (from the page's navigation start, as the browser counts it:
performance.now() when the first uPlot chart is drawn), idle RSS < 150 MiB.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

from gateway.cassandra_session import connect
from gateway.settings import CassandraConnection
from harness.browser import browser, sign_in, wait_for
from harness.query_api import insert_windows, register, user_password
from harness.services import ensure_services
from stack import process
from stack.config import StackSettings
from stack.services import by_name

log = logging.getLogger(__name__)

DEVICE = "bench-console-day"
METRICS = ("battery", "humidity", "temperature")
ROUNDS = 7
SERVICES = {"cassandra", "keycloak", "query-api", "console"}


def _day_of_windows(settings: StackSettings) -> int:
    """A day of 1m windows (1,440 per metric) for DEVICE, ending at the current minute."""
    now_ms = int(time.time() * 1000)
    end = now_ms - now_ms % 60_000
    starts = [end - 60_000 * i for i in range(1, 1441)]
    session = connect(CassandraConnection(cassandra_port=settings.cassandra_port))
    try:
        register(session, DEVICE, "tenant-a")
        return len(insert_windows(session, "agg_1m", DEVICE, starts, 60_000, METRICS))
    finally:
        session.cluster.shutdown()


def _rss_mib(settings: StackSettings) -> float:
    spec = by_name(settings, "console").processes()[0]
    pid = process.read_pid(spec)
    assert pid is not None, "the console is not running"
    return process.resident_memory_bytes(pid) / 2**20


def run() -> dict[str, Any]:
    with ensure_services(SERVICES) as settings:
        rows = _day_of_windows(settings)
        base = f"http://localhost:{settings.console_port}"
        url = f"{base}/devices/{DEVICE}?range=1d"
        first_chart_ms: list[float] = []
        points = 0
        with browser() as driver:
            sign_in(driver, base, "client1", user_password("client1"))
            for _ in range(ROUNDS):
                driver.get(url)
                wait_for(driver, "body[data-first-chart-ms]", 30)
                first_chart_ms.append(
                    float(driver.execute_script("return document.body.dataset.firstChartMs"))
                )
                points = int(driver.execute_script(
                    "return Math.max(...[...document.querySelectorAll('.chart')].map(c => +c.dataset.points))"
                ))  # fmt: skip
        # Idle: no page open, the sessions above still held.
        time.sleep(5)
        rss = _rss_mib(settings)
    cold, warm = first_chart_ms[0], first_chart_ms[1:]
    figures = {
        "rows_written": rows,
        "points_per_chart": points,
        "first_chart_ms_cold": round(cold),
        "first_chart_ms_median": round(statistics.median(warm)),
        "first_chart_ms_max": round(max(warm)),
        "first_chart_target_ms": 1000,
        "idle_rss_mib": round(rss, 1),
        "idle_rss_target_mib": 150,
    }
    log.info("console: %s", figures)
    return figures
