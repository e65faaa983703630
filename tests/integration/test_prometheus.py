"""Prometheus against the real stack: every scrape target up, and the freshness alert firing when
the writer stops and resolving once it is back.

The alert test runs a second Prometheus of its own (temporary port and TSDB) that scrapes only the
writer, with the repo's rules except a short `for` and rate window for WindowFreshnessHigh, so it
fires within minutes instead of the production rule's 2 minutes on top of the delay.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from gateway import endpoints
from stack.config import StackSettings
from stack.services import all_services, prometheus
from stack.services.apps import WriterService

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]
ALERT = "WindowFreshnessHigh"


@pytest.fixture(scope="module")
def stack(services: Services) -> Iterator[StackSettings]:
    """The whole stack: every scrape target, and readings flowing so windows keep arriving. The web
    console is left as it is (its own tests start it)."""
    names = {service.name for service in all_services(StackSettings())} - {"console"}
    with services(names) as settings:
        yield settings


def _get(url: str) -> Any:
    response = httpx.get(url, timeout=5.0)
    response.raise_for_status()
    return response.json()["data"]


def _wait(what: str, check: Callable[[], bool], timeout_s: float, interval_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:.0f}s: {what}")
        time.sleep(interval_s)


def test_every_scrape_target_is_up(stack: StackSettings) -> None:
    base = prometheus.url()
    expected = set(prometheus.scrape_targets(stack, prometheus.ObservabilitySettings()))
    state: dict[str, str] = {}
    console_running = any(s.name == "console" and s.running() for s in all_services(stack))

    def all_up() -> bool:
        active = _get(f"{base}/api/v1/targets?state=active")["activeTargets"]
        state.clear()
        state.update({t["labels"]["job"]: t["lastError"] or t["health"] for t in active})
        # The web console is a target from the day it is part of the stack: it must answer when
        # it runs, with a 404 let through until it serves /metrics.
        down = {job for job, v in state.items() if v != "up"}
        if "console" in down and ("404" in state["console"] or not console_running):
            down.discard("console")
        return set(state) == expected and not down

    try:
        # Targets are scraped every 5 s; a JVM target answers once its agent is attached.
        _wait("every target up", all_up, timeout_s=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; targets: {json.dumps(state, indent=1)}") from None


def test_the_figures_an_operator_asks_about_are_there(stack: StackSettings) -> None:
    base = prometheus.url()
    wanted = [
        "iot_writer_window_freshness_seconds_bucket", "bridge_messages_in_flight",
        "bridge_messages_dlq_total", "mosquitto_publish_messages_dropped_total",
        "iot_pki_certificate_not_after_seconds", "iot_pki_crl_next_update_seconds",
        "iot_stack_filesystem_avail_bytes", "kafka_log_end_offset",
        "flink_taskmanager_job_task_operator_numRecordsIn", "jvm_memory_used_bytes",
        "iot:flink_consumer_lag_records", "iot:window_freshness_seconds",
    ]

    def present() -> bool:
        return all(_get(f"{base}/api/v1/query?query={name}")["result"] for name in wanted)

    _wait(f"series {wanted}", present, timeout_s=90, interval_s=5)
    result = _get(f"{base}/api/v1/query?query=iot_pki_certificate_not_after_seconds")["result"]
    assert {r["metric"]["certificate"] for r in result} == {"ca", "server"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _test_rules(target: Path) -> None:
    """alerts.yml with the freshness alert's `for` at 10 s and its rate window at 30 s."""
    rules = yaml.safe_load(prometheus.RULES_FILE.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == "iot:window_freshness_seconds":
                assert "[2m]" in rule["expr"]
                rule["expr"] = rule["expr"].replace("[2m]", "[30s]")
            if rule.get("alert") == ALERT:
                rule["for"] = "10s"
    target.write_text(yaml.safe_dump(rules))


@pytest.fixture
def test_prometheus(stack: StackSettings, tmp_path: Path) -> Iterator[str]:
    """A second Prometheus: scrapes the writer every 2 s, evaluates the test rules every 2 s."""
    binary = prometheus.binary()
    assert binary is not None, "prometheus is installed by `iot up`"
    rules = tmp_path / "rules.yml"
    _test_rules(rules)
    port = _free_port()
    config = {
        "global": {"scrape_interval": "2s", "evaluation_interval": "2s", "scrape_timeout": "2s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "writer", "static_configs": [
            {"targets": [f"127.0.0.1:{endpoints.WRITER_METRICS_PORT}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [binary, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("test Prometheus ready", lambda: _ready(base), timeout_s=30, interval_s=0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/-/ready", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def _alert_state(base: str) -> str:
    alerts = _get(f"{base}/api/v1/alerts")["alerts"]
    states = [a["state"] for a in alerts if a["labels"].get("alertname") == ALERT]
    return states[0] if states else "inactive"


def _freshness(base: str) -> float | None:
    result = _get(f"{base}/api/v1/query?query=iot:window_freshness_seconds")["result"]
    return float(result[0]["value"][1]) if result else None


def test_stopping_the_writer_fires_the_freshness_alert_and_restarting_resolves_it(
    stack: StackSettings, test_prometheus: str
) -> None:
    base = test_prometheus
    # Windows arrive in time before the fault (the stack may still be catching up after a start).
    _wait("freshness under 30 s with the writer running",
          lambda: (f := _freshness(base)) is not None and f < 30 and _alert_state(base) == "inactive",
          timeout_s=240, interval_s=3)
    writer = WriterService(stack)
    writer.stop()
    stopped_at = time.monotonic()
    try:
        # The next window is due at most 60 s after the newest one written; then 30 s, then `for`.
        _wait(f"{ALERT} firing with the writer stopped",
              lambda: _alert_state(base) == "firing", timeout_s=200, interval_s=2)
        fired_after = time.monotonic() - stopped_at
        freshness = _freshness(base)
        assert freshness is not None and freshness > 30
    finally:
        writer.start()
        writer.wait_ready(stack.ready_timeout_s)
    restarted_at = time.monotonic()
    # The writer catches up on the windows it missed; new ones arrive in time again.
    _wait(f"{ALERT} resolved with the writer back",
          lambda: _alert_state(base) == "inactive", timeout_s=240, interval_s=2)
    resolved_after = time.monotonic() - restarted_at
    print(f"{ALERT}: fired {fired_after:.0f}s after the writer stopped, "
          f"resolved {resolved_after:.0f}s after it was back")
