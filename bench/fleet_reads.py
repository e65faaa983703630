"""Reads at fleet scale: 1,000 devices with a day of 1-minute windows each, polled by a fleet of
dashboards that never ask the same URL twice, against the real query API (one uvicorn worker, a
real Keycloak token), beside the best rate the raw Cassandra drivers reach for the same reads.

- Seeding: devices fleet-0000..fleet-0999 of tenant-a, registered in the device registry, with
  1,440 one-minute windows x 3 metrics each written straight into agg_1m (unlogged batches of one
  partition). A later run within two hours reuses them (the rows carry the table's TTL).
- Uncached load: request i reads device i % 1000 over the hour ending (i // 1000) minutes before
  the run's minute, so every URL of a run is new (180 rows each) and neither answer cache helps.
- Cached figure: one URL repeated, as `bench query_api` measures it, labelled cached.
- Raw drivers: the API's own statement with the same parameters, many in flight, in a process of
  its own: cassandra-driver (the API's), scylla-driver and acsylla, the last two from a throwaway
  virtualenv (scylla-driver installs as the same `cassandra` package). The best rate is the limit.

This file also runs as a plain script (`python bench/fleet_reads.py raw ...`) in that virtualenv,
so everything above `run()` imports the standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DEVICES = 1_000
PREFIX = "fleet-"
METRICS = ("battery", "humidity", "temperature")
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
# Seeded: 22 hours back and 2 hours ahead of the seeding minute (a day), so that a run within the
# next two hours still finds a full last hour for every shift.
SEED_BACK_MS, SEED_AHEAD_MS = 22 * HOUR_MS, 2 * HOUR_MS
SHIFTS = 60
CQL = (
    "SELECT toUnixTimestamp(window_start), toUnixTimestamp(window_end), metric, count, sum, min,"
    " max, avg FROM iot.agg_1m WHERE device_id = ? AND bucket_month = ? AND window_start >= ?"
    " AND window_start < ? LIMIT ?"
)
RAW_CONCURRENCY = (32, 128)
# A group of every fleet device, its windows stored as the stream computes them (members' sums).
GROUP = "fleet-all"
GROUP_TENANT = "tenant-a"
GROUP_READS = 300
DRIVER_PACKAGES = ("scylla-driver", "acsylla")


def read_params(index: int, base_ms: int) -> tuple[str, str, int, int]:
    """(device, month bucket, from, to) of the index-th distinct read."""
    device = f"{PREFIX}{index % DEVICES:04d}"
    end = base_ms - (index // DEVICES % SHIFTS) * MINUTE_MS
    bucket = time.strftime("%Y-%m", time.gmtime((end - HOUR_MS) / 1000))
    return device, bucket, end - HOUR_MS, end


# --- raw driver loads (run in a process of their own, any of the three drivers) ---------------


def _stats(latencies: list[float], elapsed: float) -> dict[str, Any]:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "rps": round(len(ordered) / elapsed, 1),
        "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
        "p99_ms": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1000, 2),
    }


def raw_python_driver(host: str, port: int, base_ms: int, total: int, concurrency: int) -> dict[str, Any]:
    """cassandra-driver or scylla-driver (the same API): execute_async with callbacks, rows as
    tuples, `concurrency` in flight; returns rows per read too, to check the read is the API's."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
    from cassandra.query import tuple_factory

    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()), row_factory=tuple_factory
    )
    cluster = Cluster(
        [host], port=port, protocol_version=4, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )
    session = cluster.connect()
    statement = session.prepare(CQL)

    def send(index: int) -> Any:
        bound = statement.bind((*read_params(index, base_ms), 10_001))
        bound.fetch_size = None
        return session.execute_async(bound)

    try:
        latencies, rows_seen, errors, elapsed = closed_loop(send, total, concurrency)
    finally:
        cluster.shutdown()
    figures = _stats(latencies, elapsed)
    figures.update(errors=errors, rows_per_read=min(rows_seen) if rows_seen else 0)
    return figures


def closed_loop(
    send: Callable[[int], Any], total: int, concurrency: int
) -> tuple[list[float], list[int], int, float]:
    """Reads 0..total-1 through a python driver (`send(i)` starts read i and returns its
    ResponseFuture), `concurrency` in flight, each finished one starting the next from the
    driver's callback. Returns the latencies, rows per read, errors and seconds taken."""
    latencies: list[float] = []
    rows_seen: list[int] = []
    lock = threading.Lock()
    done = threading.Event()
    state = {"issued": 0, "finished": 0, "errors": 0}

    def issue() -> None:
        with lock:
            index = state["issued"]
            if index >= total:
                return
            state["issued"] += 1
        sent = time.perf_counter()
        send(index).add_callbacks(finished, failed, callback_args=(sent,), errback_args=(sent,))

    def finished(rows: Any, sent: float) -> None:
        latencies.append(time.perf_counter() - sent)
        rows_seen.append(len(list(rows)))
        complete()

    def failed(exc: BaseException, sent: float) -> None:
        state["errors"] += 1
        complete()

    def complete() -> None:
        with lock:
            state["finished"] += 1
            last = state["finished"] >= total
        if last:
            done.set()
        else:
            issue()

    started = time.perf_counter()
    for _ in range(concurrency):
        issue()
    done.wait(timeout=600)
    return latencies, rows_seen, state["errors"], time.perf_counter() - started


def raw_acsylla(host: str, port: int, base_ms: int, total: int, concurrency: int) -> dict[str, Any]:
    import acsylla

    async def load() -> dict[str, Any]:
        cluster = acsylla.create_cluster([host], port=port, protocol_version=4)
        session = await cluster.create_session(keyspace="iot")
        prepared = await session.create_prepared(CQL)
        latencies: list[float] = []
        rows_seen: list[int] = []
        counter = iter(range(total))

        # Timestamps as epoch ms, as the other drivers take them; else whichever form acsylla
        # reads the rows with (a read of the seeded hour must return its 180 rows).
        from datetime import UTC, datetime

        forms: dict[str, Any] = {
            "epoch_ms": lambda t: t,
            "datetime": lambda t: datetime.fromtimestamp(t / 1000, UTC),
            "epoch_s": lambda t: t / 1000,
        }
        form = "epoch_ms"

        def bound(index: int) -> Any:
            device, bucket, start, end = read_params(index, base_ms)
            statement = prepared.bind()
            convert = forms[form]
            statement.bind_list([device, bucket, convert(start), convert(end), 10_001])
            return statement

        for form in forms:  # noqa: B007 (bound() reads it)
            try:
                if len((await session.execute(bound(0))).all()) > 0:
                    break
            except Exception:  # the next form is tried
                continue

        async def worker() -> None:
            for index in counter:
                statement = bound(index)
                sent = time.perf_counter()
                result = await session.execute(statement)
                rows = [row.as_tuple() for row in result.all()]
                latencies.append(time.perf_counter() - sent)
                rows_seen.append(len(rows))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        await session.close()
        figures = _stats(latencies, elapsed)
        figures.update(errors=0, rows_per_read=min(rows_seen) if rows_seen else 0, timestamps=form)
        return figures

    return asyncio.run(load())


def _raw_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("driver", choices=["python", "acsylla"])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--base-ms", type=int, required=True)
    parser.add_argument("--requests", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    args = parser.parse_args(argv)
    load = raw_python_driver if args.driver == "python" else raw_acsylla
    # A short warm-up on other reads (index offset: the closing shifts) and the measured run.
    load(args.host, args.port, args.base_ms - 30 * MINUTE_MS, min(2_000, args.requests), args.concurrency)
    figures = load(args.host, args.port, args.base_ms, args.requests, args.concurrency)
    sys.stdout.write(json.dumps(figures) + "\n")
    return 0


# --- the benchmark -----------------------------------------------------------------------------


def _driver_python(
    name: str, stack_dir: Path, packages: tuple[str, ...] = ()
) -> tuple[Path | None, str | None]:
    """The interpreter that runs `name`: the project's for cassandra-driver, a throwaway
    virtualenv (made once, under the stack directory) with `packages` (default: `name`) for the
    others."""
    if name == "cassandra-driver":
        return Path(sys.executable), None
    venv = stack_dir / "bench-drivers" / name
    python = venv / "bin" / "python"
    if not python.exists():
        made = subprocess.run(
            [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True, check=False
        )
        if made.returncode == 0:
            made = subprocess.run(
                [str(python), "-m", "pip", "install", "-q", *(packages or (name,))],
                capture_output=True,
                text=True,
                check=False,
                timeout=600,
            )
        if made.returncode != 0:
            return None, f"does not install: {(made.stderr or made.stdout)[-300:]}"
    return python, None


def cassandra_pid() -> int | None:
    """The local Cassandra's process, whose CPU per read is the other half of the machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"org.apache.cassandra.service.CassandraDaemon" in (entry / "cmdline").read_bytes():
                    return int(entry.name)
            except OSError:
                continue
    return None


def _cpu_s(pid: int | None) -> float:
    from bench.cpu import process_cpu_s

    return process_cpu_s(pid) if pid is not None else 0.0


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _raw_driver(name: str, stack_dir: Path, port: int, base_ms: int, requests: int) -> dict[str, Any]:
    python, problem = _driver_python(name, stack_dir)
    if python is None:
        return {"error": problem}
    kind = "acsylla" if name == "acsylla" else "python"
    runs: dict[str, Any] = {}
    cassandra = cassandra_pid()
    for concurrency in RAW_CONCURRENCY:
        cpu_before, client_before = _cpu_s(cassandra), _children_cpu_s()
        done = subprocess.run(
            [
                str(python),
                __file__,
                "raw",
                kind,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--base-ms",
                str(base_ms),
                "--requests",
                str(requests),
                "--concurrency",
                str(concurrency),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        if done.returncode != 0:
            runs[f"in_flight_{concurrency}"] = {"error": done.stderr[-500:]}
            continue
        run = json.loads(done.stdout.strip().splitlines()[-1])
        # CPU per read over the warm-up and the measured reads (one process does both).
        reads = requests + min(2_000, requests)
        run["client_cpu_ms_per_read"] = round((_children_cpu_s() - client_before) * 1000 / reads, 3)
        if cassandra is not None:
            run["cassandra_cpu_ms_per_read"] = round((_cpu_s(cassandra) - cpu_before) * 1000 / reads, 3)
        runs[f"in_flight_{concurrency}"] = run
    rates = [r["rps"] for r in runs.values() if "rps" in r and r.get("rows_per_read") == 60 * len(METRICS)]
    runs["best_rps"] = max(rates) if rates else None
    return runs


# The thin server's own virtualenv: the fastest driver and the fastest HTTP stack uvicorn has.
THIN_API_PACKAGES = ("acsylla", "uvicorn[standard]", "orjson")
THIN_API_PORT = 18_093


def _thin_api(stack_dir: Path, port: int, base_ms: int, requests: int, concurrency: int) -> dict[str, Any]:
    """The same distinct-URL load on bench/thin_api.py (the read and its JSON, nothing else):
    the most any Python API on one worker serves of this read here, beside the raw driver."""
    from bench.cpu import process_cpu_s
    from harness.query_api import stop_child
    from stack.process import listening

    python, problem = _driver_python("thin-api", stack_dir, THIN_API_PACKAGES)
    if python is None:
        return {"error": problem}
    server = subprocess.Popen(
        [str(python), str(Path(__file__).with_name("thin_api.py")), "--port", str(THIN_API_PORT),
         "--cassandra-port", str(port), "--cql", CQL],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not listening(THIN_API_PORT):
            if server.poll() is not None or time.monotonic() > deadline:
                said = server.stderr.read()[-500:] if server.stderr else b""
                return {"error": f"the thin server did not listen: {said!r}"}
            time.sleep(0.2)
        figures: dict[str, Any] = {}
        # Reads none of the API's runs make (their own shifts), warm-up first.
        asyncio.run(
            _distinct_load("127.0.0.1", THIN_API_PORT, "-", base_ms, 58 * DEVICES, 1_000, concurrency)
        )
        for connections, first in ((concurrency, 20 * DEVICES), (4 * concurrency, 10 * DEVICES)):
            cpu = process_cpu_s(server.pid)
            run = asyncio.run(
                _distinct_load("127.0.0.1", THIN_API_PORT, "-", base_ms, first, requests, connections)
            )
            run["server_cpu_ms_per_request"] = round((process_cpu_s(server.pid) - cpu) * 1000 / requests, 3)
            figures[f"connections_{connections}"] = run
        figures["best_rps"] = max(r["rps"] for r in figures.values())
        return figures
    finally:
        stop_child(server, 10)


def _seed(session: Any, now_ms: int) -> dict[str, Any]:
    """Register the fleet and write its day of rows, unless a recent run left them in place."""
    from cassandra.query import BatchStatement, BatchType

    from harness.query_api import register

    minute = now_ms - now_ms % MINUTE_MS
    probe = session.prepare(
        "SELECT count(*) FROM iot.agg_1m WHERE device_id = ? AND bucket_month = ? AND window_start = ?"
    )

    def present(device: str, at: int) -> bool:
        bucket = time.strftime("%Y-%m", time.gmtime(at / 1000))
        return int(session.execute(probe, (device, bucket, at)).one()[0]) == len(METRICS)

    from gateway.groups import aggregate_key

    last = f"{PREFIX}{DEVICES - 1:04d}"
    keys = (f"{PREFIX}0000", last, aggregate_key(GROUP_TENANT, GROUP))
    if all(present(d, t) for d in keys for t in (minute - 2 * HOUR_MS, minute)):
        return {"seeded": False, "note": "rows of an earlier run (within 2 h) reused"}
    started = time.perf_counter()
    for index in range(DEVICES):
        register(session, f"{PREFIX}{index:04d}", "tenant-a")
    insert = session.prepare(
        "INSERT INTO iot.agg_1m (device_id, bucket_month, window_start, metric, window_end, count,"
        " sum, min, max, avg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    starts = range(minute - SEED_BACK_MS, minute + SEED_AHEAD_MS, MINUTE_MS)
    in_flight: list[Any] = []
    batches = 0
    for index in range(DEVICES):
        device = f"{PREFIX}{index:04d}"
        batch: Any = None
        batch_bucket = ""
        for n, start in enumerate(starts):
            bucket = time.strftime("%Y-%m", time.gmtime(start / 1000))
            if batch is None or n % 20 == 0 or bucket != batch_bucket:
                if batch is not None:
                    in_flight.append(session.execute_async(batch))
                    batches += 1
                batch, batch_bucket = BatchStatement(batch_type=BatchType.UNLOGGED), bucket
            for offset, metric in enumerate(METRICS):
                value = float(index % 50 + offset)
                batch.add(
                    insert,
                    (
                        device,
                        bucket,
                        start,
                        metric,
                        start + MINUTE_MS,
                        30,
                        value * 30,
                        value - 1,
                        value + 1,
                        value,
                    ),
                )
            if len(in_flight) >= 64:
                for future in in_flight:
                    future.result()
                in_flight.clear()
        in_flight.append(session.execute_async(batch))
        batches += 1
    for future in in_flight:
        future.result()
    _seed_group(session, insert, starts)
    seconds = time.perf_counter() - started
    rows = DEVICES * len(starts) * len(METRICS)
    return {
        "seeded": True,
        "rows": rows,
        "batches": batches,
        "seconds": round(seconds, 1),
        "rows_per_s": round(rows / seconds),
    }


def _seed_group(session: Any, insert: Any, starts: range) -> None:
    """The group of all fleet devices and its windows: what the stream stores for it, each
    window's count, sum, min and max over the members' readings."""
    from gateway.groups import GroupError, GroupRegistry, aggregate_key
    from gateway.registry import DeviceRegistry

    groups = GroupRegistry(session, DeviceRegistry(session))
    with contextlib.suppress(GroupError):  # an earlier run's
        groups.create(GROUP_TENANT, GROUP)
    groups.add(GROUP, [f"{PREFIX}{index:04d}" for index in range(DEVICES)], GROUP_TENANT)
    key = aggregate_key(GROUP_TENANT, GROUP)
    futures = []
    for start in starts:
        bucket = time.strftime("%Y-%m", time.gmtime(start / 1000))
        for offset, metric in enumerate(METRICS):
            values = [float(index % 50 + offset) for index in range(DEVICES)]
            count, total = 30 * DEVICES, 30 * sum(values)
            row = (key, bucket, start, metric, start + MINUTE_MS, count, total)
            futures.append(
                session.execute_async(insert, (*row, min(values) - 1, max(values) + 1, total / count))
            )
        if len(futures) >= 256:
            for future in futures:
                future.result()
            futures.clear()
    for future in futures:
        future.result()


async def _group_reads(host: str, port: int, token: str, base_ms: int) -> dict[str, Any]:
    """The group's last hour of 1m windows, read one after another, every URL new (the hour
    ends a minute earlier each time): the latency one dashboard of the group sees."""
    from bench.query_api import _exchange, _figures

    reader, writer = await asyncio.open_connection(host, port)
    latencies: list[float] = []
    errors: list[str] = []
    try:
        for index in range(GROUP_READS):
            end = base_ms - (index % SHIFTS) * MINUTE_MS
            query = f"from={end - HOUR_MS}&to={end}&limit={10_000 - index // SHIFTS}"
            request = (
                f"GET /groups/{GROUP}/1m?{query} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Authorization: Bearer {token}\r\n\r\n"
            ).encode()
            sent = time.perf_counter()
            await _exchange(reader, writer, request, errors)
            latencies.append(time.perf_counter() - sent)
    finally:
        writer.close()
    if errors:
        raise RuntimeError(f"{len(errors)} non-200 answers, first: {errors[0]}")
    figures = _figures(latencies, sum(latencies))
    figures["members"] = DEVICES
    return figures


async def _distinct_load(
    host: str,
    port: int,
    token: str,
    base_ms: int,
    first: int,
    total: int,
    concurrency: int,
    rate: float = 0,
) -> dict[str, Any]:
    """Every request a new URL (read_params); closed loop, or paced at `rate` (latency from when
    each request was due, so a stalled server is charged for the requests it held back)."""
    from bench.query_api import _exchange, _figures

    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(first, first + total))
    begin = time.perf_counter() + 0.1

    def request(index: int) -> bytes:
        device, _, start, end = read_params(index, base_ms)
        path = f"/query/{device}/1m?from={start}&to={end}"
        return (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n\r\n"
        ).encode()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for index in counter:
                due = begin + (index - first) / rate if rate else time.perf_counter()
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                await _exchange(reader, writer, request(index), errors)
                latencies.append(time.perf_counter() - due)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    elapsed = time.perf_counter() - (begin if rate else started)
    if errors:
        raise RuntimeError(f"{len(errors)} non-200 answers, first: {errors[0]}")
    figures = _figures(latencies, elapsed)
    if rate:
        figures["target_rps"] = rate
    return figures


def _profile(pid: int, seconds: int, out: Path, stack_dir: Path) -> dict[str, Any]:
    """py-spy (from the drivers' virtualenv) on the API for `seconds`: the top functions by
    samples they are on the stack of (own and total), from its raw collapsed stacks."""
    venv = stack_dir / "bench-drivers" / "py-spy"
    spy = venv / "bin" / "py-spy"
    if not spy.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=False, capture_output=True)
        subprocess.run(
            [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "py-spy"],
            check=False,
            capture_output=True,
            timeout=600,
        )
    if not spy.exists():
        return {"error": "py-spy does not install"}
    return {
        "process": subprocess.Popen(
            [
                str(spy),
                "record",
                "-p",
                str(pid),
                "-d",
                str(seconds),
                "-r",
                "200",
                "-f",
                "raw",
                "-o",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
    }


def _top(out: Path, count: int = 12) -> dict[str, Any]:
    if not out.exists():
        return {"error": "no profile written (ptrace not permitted?)"}
    own: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        n = int(samples)
        total += n
        leaf = stack.split(";")[-1]
        own[leaf] = own.get(leaf, 0) + n
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:count]
    return {"samples": total, "own_share": {k: round(v / total, 3) for k, v in ranked}, "file": str(out)}


def _knobs() -> dict[str, Any]:
    """What a run measures, from the environment (all of it by default):

    - IOT_BENCH_FLEET_REQUESTS: requests of the uncached run (20,000);
    - IOT_BENCH_FLEET_DRIVERS: the raw drivers, comma-separated (cassandra-driver,scylla-driver,acsylla);
    - IOT_BENCH_FLEET_SHORT=1: the uncached runs and the raw drivers only (no paced, group,
      cached or profile runs), so that a run fits the time it may hold the stack;
    - IOT_BENCH_FLEET_BASELINE_SRC: another checkout whose API runs the same uncached load in
      the same run (before and after a change, side by side)."""
    drivers = os.environ.get("IOT_BENCH_FLEET_DRIVERS", ",".join(("cassandra-driver", *DRIVER_PACKAGES)))
    baseline = os.environ.get("IOT_BENCH_FLEET_BASELINE_SRC")
    return {
        "requests": int(os.environ.get("IOT_BENCH_FLEET_REQUESTS", "20000")),
        "drivers": [name.strip() for name in drivers.split(",") if name.strip()],
        "short": os.environ.get("IOT_BENCH_FLEET_SHORT") == "1",
        "baseline": Path(baseline) if baseline else None,
    }


def _uncached(
    api: Any, token: str, base_ms: int, first: int, total: int, concurrency: int, cassandra: int | None
) -> dict[str, Any]:
    """The distinct-URL load on a running API after a warm-up, with both sides' CPU per request."""
    from bench.cpu import process_cpu_s

    host, port_text = api.base.removeprefix("http://").split(":")
    port = int(port_text)
    # Warm-up on reads the measured runs do not repeat (the last shifts).
    asyncio.run(_distinct_load(host, port, token, base_ms, 59 * DEVICES, 1_000, concurrency))
    cpu, cassandra_cpu = process_cpu_s(api.pid), _cpu_s(cassandra)
    figures = asyncio.run(_distinct_load(host, port, token, base_ms, first, total, concurrency))
    figures["server_cpu_ms_per_request"] = round((process_cpu_s(api.pid) - cpu) * 1000 / total, 3)
    if cassandra is not None:
        figures["cassandra_cpu_ms_per_request"] = round(
            (_cpu_s(cassandra) - cassandra_cpu) * 1000 / total, 3
        )
    figures["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return figures


def run(concurrency: int = 16, paced_rps: float = 500, paced_seconds: int = 20) -> dict[str, Any]:
    import tempfile

    from cassandra.cluster import Cluster

    from bench.query_api import _http_load
    from gateway import endpoints
    from harness.query_api import password_token, running_api
    from harness.services import ensure_services
    from query_api.config import QueryApiSettings
    from stack.config import StackSettings
    from storage.config import StorageSettings
    from storage.migrate import migrate

    knobs = _knobs()
    requests: int = knobs["requests"]
    settings = StackSettings()
    figures: dict[str, Any] = {
        "benchmark": "fleet_reads",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "api_reactor": QueryApiSettings().cassandra_reactor,
        "devices": DEVICES,
        "read": "/query/{id}/1m over one hour: 60 windows x 3 metrics",
        "knobs": {k: str(v) if isinstance(v, Path) else v for k, v in knobs.items()},
    }
    with ensure_services({"cassandra", "keycloak"}, settings) as stack:
        cluster = Cluster(
            [endpoints.HOST],
            port=stack.cassandra_port,
            protocol_version=QueryApiSettings().cassandra_protocol_version,
        )
        try:
            session = cluster.connect()
            migrate(session, StorageSettings())
            now_ms = int(time.time() * 1000)
            figures["seeding"] = _seed(session, now_ms)
        finally:
            cluster.shutdown()
        base_ms = now_ms - now_ms % MINUTE_MS
        token = password_token("client1")
        log_dir = Path(tempfile.mkdtemp(prefix="bench-fleet-reads-"))
        cassandra = cassandra_pid()
        if knobs["baseline"] is not None:
            # Reads of other shifts than the measured run's, equally new to both APIs.
            with running_api(log_dir / "query-api-baseline.log", source=knobs["baseline"]) as api:
                figures["api_baseline_source_uncached"] = _uncached(
                    api, token, base_ms, requests, requests, concurrency, cassandra
                )
        with running_api(log_dir / "query-api.log") as api:
            host, port_text = api.base.removeprefix("http://").split(":")
            port = int(port_text)
            uncached = _uncached(api, token, base_ms, 0, requests, concurrency, cassandra)
            # More connections keep more reads in flight to Cassandra, as the raw drivers do.
            wide = asyncio.run(
                _distinct_load(host, port, token, base_ms, 30 * DEVICES, 10_000, 4 * concurrency)
            )
            figures["api_one_worker_uncached_64_connections"] = wide
            # The limit, measured between the API's runs on the same rows (the API idles).
            raw = {
                name: _raw_driver(
                    name, settings.stack_dir, stack.cassandra_port, base_ms, min(requests, 10_000)
                )
                for name in knobs["drivers"]
            }
            figures["raw_drivers"] = raw
            best = max((r["best_rps"] or 0 for r in raw.values() if "best_rps" in r), default=0)
            figures["raw_best_rps"] = best
            figures["thin_api_acsylla"] = _thin_api(
                settings.stack_dir, stack.cassandra_port, base_ms, min(requests, 10_000), concurrency
            )
            thin = figures["thin_api_acsylla"].get("best_rps")
            figures["thin_api_vs_raw_best"] = round(thin / best, 3) if thin and best else None
            if not knobs["short"]:
                _the_rest(figures, api, token, base_ms, requests, concurrency, paced_rps, paced_seconds)
                figures["api_one_worker_cached_same_url"] = asyncio.run(
                    _http_load(host, port, f"/query/{PREFIX}0000/1m", token, requests, concurrency)
                )
                # Profiled apart from the measured runs (the sampler costs the API CPU too), on
                # reads none of them made.
                profile_out = log_dir / "py-spy.txt"
                spy = _profile(api.pid, 8, profile_out, settings.stack_dir)
                if "process" in spy:
                    asyncio.run(_distinct_load(host, port, token, base_ms, 40 * DEVICES, 6_000, concurrency))
                    _, err = spy["process"].communicate(timeout=60)
                    figures["profile_uncached"] = _top(profile_out)
                    if err:
                        figures["profile_uncached"]["py_spy_said"] = err.decode()[-300:]
                else:
                    figures["profile_uncached"] = spy
        # The same uncached load with the other reactor: the driver's own thread (libev), or the
        # API's loop (loop_connection.py).
        other = "libev" if figures["api_reactor"] == "loop" else "loop"
        with running_api(log_dir / f"query-api-{other}.log", {"IOT_CASSANDRA_REACTOR": other}) as api:
            figures[f"api_one_worker_uncached_{other}_reactor"] = _uncached(
                api, token, base_ms, 50 * DEVICES, 8_000, concurrency, cassandra
            )
        figures["api_one_worker_uncached"] = uncached
        top = max(uncached["rps"], wide["rps"])
        figures["uncached_vs_raw_best"] = round(top / best, 3) if best else None
        targets = {
            "uncached_rps>=1000": top >= 1_000,
            "uncached>=80%_of_raw": bool(best) and top >= 0.8 * best,
        }
        if not knobs["short"]:
            paced = figures["api_one_worker_uncached_paced"]
            targets[f"p99<50ms_at_{paced_rps:g}_paced"] = paced["p99_ms"] < 50
            targets["group_of_1000_p99<50ms"] = figures["group_of_1000_last_hour"]["p99_ms"] < 50
        figures["targets"] = targets
        figures["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return figures


def _the_rest(
    figures: dict[str, Any],
    api: Any,
    token: str,
    base_ms: int,
    requests: int,
    concurrency: int,
    paced_rps: float,
    paced_seconds: int,
) -> None:
    """The paced load and the group's reads, on the API of the measured run."""
    host, port_text = api.base.removeprefix("http://").split(":")
    port = int(port_text)
    figures["api_one_worker_uncached_paced"] = asyncio.run(
        _distinct_load(
            host,
            port,
            token,
            base_ms,
            requests,
            int(paced_rps * paced_seconds),
            concurrency,
            rate=paced_rps,
        )
    )
    figures["group_of_1000_last_hour"] = asyncio.run(_group_reads(host, port, token, base_ms))


if __name__ == "__main__":
    if sys.argv[1:2] == ["raw"]:
        sys.exit(_raw_main(sys.argv[2:]))
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(run(), indent=2))
