"""Query API benchmark: authenticated GET /query/{id}/1m over the last hour, one uvicorn worker,
side by side with the raw cassandra-driver rate of the same read (the ceiling).

The API runs as its own process (`python -m query_api`, one worker) against the real Cassandra
and Keycloak. The load is a closed loop of `concurrency` keep-alive connections speaking plain
HTTP/1.1 over asyncio streams: a few microseconds per request on the client side, so the figure
measures the API rather than an HTTP client library (httpx costs more per request than the API).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import tuple_factory

from bench.cpu import process_cpu_s
from bench.fleet_reads import closed_loop
from gateway import endpoints
from harness.query_api import (
    insert_windows,
    password_token,
    register,
    running_api,
)
from harness.services import ensure_services
from query_api.config import QueryApiSettings
from storage.config import StorageSettings
from storage.migrate import migrate

log = logging.getLogger(__name__)

REQUESTS = 20_000
WARMUP = 1_000
CONCURRENCY = 16
# The target rate: latency is measured at it, paced, besides the closed loop's maximum.
TARGET_RPS = 1_500
PACED_SECONDS = 20
# What the emulator sends (emulator/device.py): 60 windows x 3 metrics = 180 rows per answer.
METRICS = ("battery", "humidity", "temperature")


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _figures(latencies: list[float], elapsed: float) -> dict[str, Any]:
    return {
        "requests": len(latencies),
        "rps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


async def _http_load(
    host: str, port: int, path: str, token: str, total: int, concurrency: int
) -> dict[str, Any]:
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    remaining = total
    errors: list[str] = []

    async def connection() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                await _exchange(reader, writer, request, errors)
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} non-200 answers, first: {errors[0]}")
    return _figures(latencies, elapsed)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes, errors: list[str]
) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await reader.readexactly(length)
    if status != 200:
        errors.append(f"{status} {body[:200]!r}")


async def _http_paced(
    host: str, port: int, path: str, token: str, rate: float, seconds: float, concurrency: int
) -> dict[str, Any]:
    """An open loop at `rate` requests/s: request i is due at start + i/rate, and its latency
    counts from when it was due, so a stalled server is charged for the requests it held back
    (no coordinated omission)."""
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
    ).encode()
    total = int(rate * seconds)
    latencies: list[float] = []
    errors: list[str] = []
    begin = time.perf_counter() + 0.1

    async def connection(first: int) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for i in range(first, total, concurrency):
                due = begin + i / rate
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await _exchange(reader, writer, request, errors)
                latencies.append(time.perf_counter() - due)
        finally:
            writer.close()

    await asyncio.gather(*(connection(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - begin
    if errors:
        raise RuntimeError(f"{len(errors)} non-200 answers, first: {errors[0]}")
    figures = _figures(latencies, elapsed)
    figures["target_rps"] = rate
    return figures


def _driver_load(
    session: Session, device: str, start_ms: int, end_ms: int, total: int, concurrency: int
) -> dict[str, Any]:
    """The same read the API does, straight through cassandra-driver's execute_async."""
    statement = session.prepare(
        "SELECT window_start, window_end, metric, count, sum, min, max, avg FROM iot.agg_1m"
        " WHERE device_id = ? AND bucket_month = ? AND window_start >= ? AND window_start < ?"
        " LIMIT ?"
    )
    bucket = time.strftime("%Y-%m", time.gmtime(start_ms / 1000))
    params = (device, bucket, start_ms, end_ms, 10_001)
    latencies, _, errors, elapsed = closed_loop(
        lambda _: session.execute_async(statement, params, execution_profile="bench"), total, concurrency
    )
    if errors:
        raise RuntimeError(f"{errors} driver errors")
    return _figures(latencies, elapsed)


def _seed(session: Session, now_ms: int) -> tuple[str, int, int]:
    """A fresh device of tenant-a with 60 one-minute windows x 4 metrics in the last hour."""
    device = f"bench-{uuid.uuid4().hex[:10]}"
    register(session, device, "tenant-a")
    minute = now_ms // 60_000 * 60_000
    # Keep the hour inside one month partition so the raw read is exactly the API's read.
    start = max(minute - 60 * 60_000, _month_start(minute))
    insert_windows(session, "agg_1m", device, range(start, minute, 60_000), 60_000, METRICS)
    return device, start, minute


def _month_start(millis: int) -> int:
    tm = time.gmtime(millis / 1000)
    return int(time.mktime((tm.tm_year, tm.tm_mon, 1, 0, 0, 0, 0, 0, 0)) - time.timezone) * 1000


@dataclass(frozen=True)
class ClosedLoop:
    """`requests` in all, `concurrency` in flight, after `warmup` uncounted ones."""

    requests: int
    concurrency: int
    warmup: int


def _api_load(
    log_file: Path, env: dict[str, str], path: str, token: str, load: ClosedLoop, paced_rps: float = 0
) -> dict[str, Any]:
    """`python -m query_api` (one worker) under the closed-loop load, plus its CPU per request."""
    with running_api(log_file, env) as running:
        host, port = running.base.removeprefix("http://").split(":")
        asyncio.run(_http_load(host, int(port), path, token, load.warmup, load.concurrency))
        cpu_before = process_cpu_s(running.pid)
        figures = asyncio.run(_http_load(host, int(port), path, token, load.requests, load.concurrency))
        figures["server_cpu_ms_per_request"] = round(
            (process_cpu_s(running.pid) - cpu_before) * 1000 / load.requests, 3
        )
        if paced_rps:
            figures["paced"] = asyncio.run(
                _http_paced(host, int(port), path, token, paced_rps, PACED_SECONDS, load.concurrency)
            )
    return figures


def run(requests: int = REQUESTS, concurrency: int = CONCURRENCY, warmup: int = WARMUP) -> dict[str, Any]:
    with ensure_services({"cassandra", "keycloak"}) as stack:
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
            row_factory=tuple_factory,
        )
        cluster = Cluster(
            [endpoints.HOST],
            port=stack.cassandra_port,
            # The API's protocol (QueryApiSettings.cassandra_protocol_version), for the same read.
            protocol_version=QueryApiSettings().cassandra_protocol_version,
            # Named tuples for the schema and seeding helpers; tuples (as the API) for the load.
            execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(), "bench": profile},
        )
        try:
            session = cluster.connect()
            migrate(session, StorageSettings())
            device, start_ms, end_ms = _seed(session, int(time.time() * 1000))
            _driver_load(session, device, start_ms, end_ms, warmup, concurrency)
            cpu_before = process_cpu_s(os.getpid())
            raw = _driver_load(session, device, start_ms, end_ms, requests, concurrency)
            raw["client_cpu_ms_per_read"] = round(
                (process_cpu_s(os.getpid()) - cpu_before) * 1000 / requests, 3
            )
        finally:
            cluster.shutdown()
        token = password_token("client1")
        # The API's default range for 1m is exactly the last hour.
        path = f"/query/{device}/1m"
        log_dir = Path(tempfile.mkdtemp(prefix="bench-query-api-"))
        load = ClosedLoop(requests, concurrency, warmup)
        api = _api_load(log_dir / "query-api.log", {}, path, token, load, TARGET_RPS)
        # The same API with its answer cache off: every request is a Cassandra read.
        no_cache = {"IOT_RESULT_CACHE_S": "0"}
        uncached = _api_load(log_dir / "query-api-nocache.log", no_cache, path, token, load)
    return {
        "benchmark": "query_api",
        "read": f"/query/{{id}}/1m, last hour, {(end_ms - start_ms) // 60_000} windows x "
        f"{len(METRICS)} metrics",
        "concurrency": concurrency,
        "api_one_worker": api,
        "api_one_worker_cache_off": uncached,
        "raw_driver": raw,
        "api_vs_raw": round(api["rps"] / raw["rps"], 3),
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(json.dumps(run(), indent=2))
