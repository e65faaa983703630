"""Observability's cost: Prometheus's resident memory with the whole stack scraped, and the CPU the
scrapes add to the idle stack (the stack as `make up` leaves it: the default emulator's 50
readings/s flowing).

Targets (docs/observability.md): Prometheus's RSS < 200 MiB; the exporters add < 5 % CPU.

"On" is the stack with Prometheus and the stack exporter running: every target scraped every 5 s,
so the JMX agents in Kafka and Cassandra and Flink's reporter collect on each scrape. "Off" is
the same stack with those two processes stopped: the agents and the reporter then do nothing (they
collect only when asked). Rounds alternate on/off in the same run; the CPU of every process of the
stack (Prometheus and the exporter included when on) is read from /proc before and after each
round. The difference of the medians, relative to "off", is the exporters' share.
"""

from __future__ import annotations

import logging
import statistics
import time
from typing import Any

import httpx

from bench.cpu import process_cpu_s
from stack import process
from stack.config import StackSettings
from stack.services import all_services
from stack.services.prometheus import NAME, ObservabilitySettings, PrometheusService, url

log = logging.getLogger("bench.observability")

def _stack_pids(settings: StackSettings) -> dict[str, int]:
    pids = {}
    for service in all_services(settings):
        for spec in service.processes():
            pid = process.read_pid(spec)
            if pid is not None:
                pids[spec.name] = pid
    return pids


def _round(settings: StackSettings, seconds: float) -> tuple[float, dict[str, float]]:
    """Cores the whole stack used over `seconds`, and each process's share."""
    pids = _stack_pids(settings)
    before = {name: process_cpu_s(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    used = {name: (process_cpu_s(pid) - before[name]) / elapsed for name, pid in pids.items()}
    return sum(used.values()), used


def _tsdb_series() -> int | None:
    try:
        data = httpx.get(f"{url()}/api/v1/status/tsdb", timeout=5).json()["data"]
        return int(data["headStats"]["numSeries"])
    except (httpx.HTTPError, KeyError, ValueError):
        return None


def _prometheus_rss(service: PrometheusService) -> dict[str, float]:
    rss = {}
    for spec in service.processes():
        pid = process.read_pid(spec)
        rss[spec.name] = process.resident_memory_bytes(pid) / 2**20 if pid else 0.0
    return rss


def run(rounds: int = 3, round_s: float = 40.0, settle_s: float = 10.0) -> dict[str, Any]:
    settings = StackSettings()
    service = PrometheusService(settings)
    obs = ObservabilitySettings()
    if not service.running():
        service.install()
        service.start()
        service.wait_ready(settings.ready_timeout_s)
    targets = httpx.get(f"{url(obs)}/api/v1/targets?state=active", timeout=5).json()
    active = targets["data"]["activeTargets"]
    figures: dict[str, Any] = {
        "scrape_interval": obs.prometheus_scrape_interval,
        "targets": len(active),
        "targets_up": sum(1 for t in active if t["health"] == "up"),
        "tsdb_head_series": _tsdb_series(),
    }
    rss = _prometheus_rss(service)
    figures["prometheus_rss_mib"] = round(rss.get(NAME, 0.0), 1)
    figures["stack_exporter_rss_mib"] = round(rss.get("stack-exporter", 0.0), 1)
    figures["prometheus_rss_target_mib"] = 200
    on: list[float] = []
    off: list[float] = []
    shares: dict[str, list[float]] = {}
    try:
        for index in range(rounds):
            cores, used = _round(settings, round_s)
            on.append(cores)
            for name in (NAME, "stack-exporter", "kafka", "cassandra", "flink-taskmanager",
                         "flink-jobmanager"):
                shares.setdefault(name, []).append(used.get(name, 0.0))
            log.info("round %d on: %.3f cores", index + 1, cores)
            service.stop()
            time.sleep(settle_s)
            cores, used = _round(settings, round_s)
            off.append(cores)
            for name in ("kafka", "cassandra", "flink-taskmanager", "flink-jobmanager"):
                shares.setdefault(f"{name}_off", []).append(used.get(name, 0.0))
            log.info("round %d off: %.3f cores", index + 1, cores)
            service.start()
            service.wait_ready(settings.ready_timeout_s)
            time.sleep(settle_s)
    finally:
        if not service.running():
            service.start()
            service.wait_ready(settings.ready_timeout_s)
    on_median, off_median = statistics.median(on), statistics.median(off)
    figures.update({
        "rounds": rounds,
        "round_seconds": round_s,
        "stack_cores_on": [round(c, 3) for c in on],
        "stack_cores_off": [round(c, 3) for c in off],
        "exporters_cpu_overhead_percent": round(100 * (on_median - off_median) / off_median, 2),
        "exporters_cpu_overhead_target_percent": 5,
        "process_cores_median": {name: round(statistics.median(v), 4) for name, v in shares.items()},
    })
    return figures
