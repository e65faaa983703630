"""The Flink job through the real stack, against the oracle.

A deterministic data set (several devices and metrics, readings up to 10 s out of order, late
readings sent after their windows were final) goes into a Kafka topic of this test; a job instance
of this test aggregates it into the real aggregate topics; the real writer puts the rows into
Cassandra; the rows must equal what tests/oracle.py computes. Run twice: undisturbed, and with the
task manager killed mid-stream (the job restores from its checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cassandra.cluster import Session
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from flink_jobs.config import FlinkJobSettings
from flink_jobs.job import submit
from flink_jobs.rest import FlinkRest
from gateway import endpoints
from stack import process
from stack.config import StackSettings
from storage.cassandra_session import connect
from storage.rows import bucket_month, bucket_year
from tests.oracle import Agg, OracleReading, close_enough, expected

pytestmark = pytest.mark.e2e

DEVICES = 4
METRICS = ("temperature", "humidity")
STEP_S = 5
MINUTES = 65


@pytest.fixture(scope="module")
def stack(services: Any) -> Iterator[StackSettings]:
    with services({"kafka", "cassandra", "flink", "writer"}) as settings:
        yield settings


@pytest.fixture(scope="module")
def cql(stack: StackSettings) -> Iterator[Session]:
    cluster, session = connect([endpoints.HOST], stack.cassandra_port, endpoints.CASSANDRA_KEYSPACE)
    yield session
    cluster.shutdown()


def _data(run: str) -> tuple[list[OracleReading], list[OracleReading], list[OracleReading]]:
    """(stream, late readings, closer). The stream starts on an hour boundary 3 hours ago."""
    rng = random.Random(run)
    now = int(time.time() * 1000)
    base = now - now % 3_600_000 - 3 * 3_600_000
    stream = []
    for d in range(DEVICES):
        for step in range(0, MINUTES * 60, STEP_S):
            ts = base + step * 1000 + rng.randint(0, 999)
            metrics = {m: round(rng.uniform(-20, 40), 3) for m in METRICS[: 1 + d % 2]}
            stream.append(OracleReading(f"oracle-{run}-{d}", ts, metrics))
    # Delivered out of order by up to 10 s, never more: none of these is late.
    stream.sort(key=lambda r: r.ts + rng.randint(0, 9_000))
    late = [
        OracleReading(f"oracle-{run}-{d}", base + 30_000 + d, {"temperature": 99.0 + d}, late=True)
        for d in range(DEVICES)
    ]
    # Pushes the watermark past every window of the stream; its own windows stay open.
    closer = [OracleReading(f"oracle-{run}-clock", base + 2 * 3_600_000 + 120_000, {"tick": 1.0})]
    return stream, late, closer


def _produce(bootstrap: str, topic: str, readings: list[OracleReading]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for r in readings:
        value = {"deviceId": r.device_id, "tenant": "tenant-a", "ts": r.ts, "metrics": r.metrics,
                 "receivedAt": int(time.time() * 1000)}
        producer.produce(topic, key=r.device_id.encode(), value=json.dumps(value).encode())
        producer.poll(0)
    assert producer.flush(30) == 0


def _rows(session: Session, table: str, device: str, bucket: object) -> list[Any]:
    column = "bucket_month" if table == "agg_1m" else "bucket_year"
    return list(session.execute(
        f"SELECT * FROM {table} WHERE device_id = %s AND {column} = %s", (device, bucket)))


def _windows(session: Session, table: str, devices: list[str], starts: set[int]) -> dict[Any, Any]:
    bucket = bucket_month if table == "agg_1m" else bucket_year
    found = {}
    for device in devices:
        for b in {bucket(s) for s in starts}:
            for row in _rows(session, table, device, b):
                start = int(row.window_start.timestamp() * 1000)
                found[(device, row.metric, start)] = row
    return found


def _all_time(session: Session, devices: list[str]) -> dict[Any, Any]:
    return {(row.device_id, row.metric): row for device in devices
            for row in session.execute("SELECT * FROM agg_all WHERE device_id = %s", (device,))}


def _same(row: Any, want: Agg) -> bool:
    return (row.count == want.count and row.min == want.min and row.max == want.max
            and close_enough(row.sum, want.sum) and close_enough(row.avg, want.avg))


def _wait(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")


def _job_running(rest: FlinkRest, name: str) -> bool:
    """Running with every task deployed (a job is RUNNING before its tasks have slots)."""
    job = rest.active_job(name)
    return (job is not None and job["state"] == "RUNNING"
            and job["tasks"]["running"] == job["tasks"]["total"])


def _restart_taskmanager(stack: StackSettings, rest: FlinkRest, job_id: str) -> None:
    from stack.services.flink import taskmanager_spec

    checkpoint = rest.latest_checkpoint(job_id)
    _wait(lambda: rest.latest_checkpoint(job_id) not in (None, checkpoint), 60, "a checkpoint")
    spec = taskmanager_spec(stack)
    assert process.kill(spec), "the task manager was not running"
    time.sleep(2)
    process.start(spec)


@pytest.mark.parametrize("kill_taskmanager", [False, True], ids=["undisturbed", "taskmanager-killed"])
def test_rows_match_oracle(stack: StackSettings, cql: Session, kill_taskmanager: bool) -> None:
    _run_oracle(stack, cql, kill_taskmanager)


def _run_oracle(
    stack: StackSettings, cql: Session, kill_taskmanager: bool
) -> tuple[str, dict[Any, Agg], dict[Any, Agg], dict[Any, Agg]]:
    """Send the data set through a job instance of its own; assert the Cassandra rows equal the
    oracle; return (run id, expected 1m, 1h, all-time)."""
    from stack.services.flink import kafka_connector_jar

    run = uuid.uuid4().hex[:8]
    bootstrap = f"{endpoints.HOST}:{stack.kafka_port}"
    topic = f"test.oracle.{run}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    settings = FlinkJobSettings(
        job_name=f"oracle-{run}", source_topic=topic, consumer_group=f"oracle-{run}",
        kafka_bootstrap=bootstrap, rest_url=f"http://localhost:{stack.flink_rest_port}",
        connector_jar=kafka_connector_jar(stack), checkpoint_interval_s=2,
        checkpoint_dir=stack.stack_dir / "flink" / "checkpoints",
    )
    stream, late, closer = _data(run)
    devices = sorted({r.device_id for r in stream})
    minute, hour, all_time = expected([*stream, *late])
    rest = FlinkRest(settings.rest_url)
    job_id = submit(settings)
    try:
        _wait(lambda: _job_running(rest, settings.job_name), 120, "the job to run")
        half = len(stream) // 2
        _produce(bootstrap, topic, stream[:half])
        if kill_taskmanager:
            _restart_taskmanager(stack, rest, job_id)
            _wait(lambda: _job_running(rest, settings.job_name), 180, "the job to restore")
        _produce(bootstrap, topic, stream[half:])
        # Late readings only count as late once the watermark passed their windows. After a
        # restore the watermark starts over (Flink does not checkpoint it), so wait until the
        # stream's last windows are written: the watermark is then past every early window.
        newest = max(k[2] for k in minute)
        settled = {k for k in minute if newest - 180_000 <= k[2] <= newest - 120_000}
        _wait(lambda: settled <= _windows(cql, "agg_1m", devices, {k[2] for k in settled}).keys(),
              180, "the stream's last windows in Cassandra")
        _produce(bootstrap, topic, late)
        time.sleep(3)
        _produce(bootstrap, topic, closer)

        def complete() -> bool:
            rows = _all_time(cql, devices)
            return (len(_windows(cql, "agg_1h", devices, {k[2] for k in hour})) == len(hour)
                    and all(key in rows and rows[key].count == want.count
                            for key, want in all_time.items()))

        _wait(complete, 240, "all windows and all-time rows")
        got_minute = _windows(cql, "agg_1m", devices, {k[2] for k in minute})
        assert got_minute.keys() == minute.keys()
        bad = [k for k, want in minute.items() if not _same(got_minute[k], want)]
        assert not bad, f"1m rows differ from the oracle: {bad[:5]}"
        got_hour = _windows(cql, "agg_1h", devices, {k[2] for k in hour})
        assert got_hour.keys() == hour.keys()
        assert all(_same(got_hour[k], want) for k, want in hour.items())
        got_all = _all_time(cql, devices)
        assert got_all.keys() == all_time.keys()
        for key, want in all_time.items():
            row = got_all[key]
            assert _same(row, want), key
            assert row.late == want.late, (key, row.late, want.late)
            assert int(row.first_ts.timestamp() * 1000) == want.first_ts
            assert int(row.last_ts.timestamp() * 1000) == want.last_ts
    finally:
        with contextlib.suppress(httpx.HTTPError):
            rest.cancel(job_id)
        rest.close()
        admin.delete_topics([topic])
    return run, minute, hour, all_time


def test_api_serves_the_oracle_windows(services: Any) -> None:
    """1m, 1h and all through the query API with a real token equal the oracle, for data whose
    hours can close in a test's minutes (sent to Kafka with past event times)."""
    from gateway.registry import DeviceRegistry
    from gateway.registry import connect as registry_session
    from tests.integration.query_api_support import password_token

    with services({"kafka", "cassandra", "flink", "writer", "keycloak", "query-api"}) as settings:
        cluster, session = connect([endpoints.HOST], settings.cassandra_port, endpoints.CASSANDRA_KEYSPACE)
        try:
            run, minute, hour, all_time = _run_oracle(settings, session, kill_taskmanager=False)
        finally:
            cluster.shutdown()
        devices = sorted({k[0] for k in all_time})
        registry_cql = registry_session([endpoints.HOST], settings.cassandra_port)
        try:
            registry = DeviceRegistry(registry_cql)
            for device in devices:
                registry.register(device, "tenant-a", f"oracle-{run}")
        finally:
            registry_cql.cluster.shutdown()
        headers = {"Authorization": f"Bearer {password_token('client1')}"}
        api = f"http://localhost:{settings.query_api_port}/query"
        start, end = min(k[2] for k in minute), max(k[2] for k in minute) + 60_000
        for device in devices:
            for window, expected_rows in (("1m", minute), ("1h", hour)):
                body = httpx.get(f"{api}/{device}/{window}", headers=headers, timeout=10,
                                 params={"from": start, "to": end, "limit": 10_000}).json()
                got = {(device, i["metric"], _iso_ms(i["windowStart"])): i for i in body["items"]}
                want = {k: v for k, v in expected_rows.items() if k[0] == device}
                assert got.keys() == want.keys(), (device, window)
                for key, agg in want.items():
                    item = got[key]
                    assert (item["count"], item["min"], item["max"]) == (agg.count, agg.min, agg.max)
                    assert close_enough(item["sum"], agg.sum) and close_enough(item["avg"], agg.avg)
            items = httpx.get(f"{api}/{device}/all", headers=headers, timeout=10).json()["items"]
            got_all = {(device, i["metric"]): i for i in items}
            want_all = {k: v for k, v in all_time.items() if k[0] == device}
            assert got_all.keys() == want_all.keys()
            for pair, agg in want_all.items():
                assert (got_all[pair]["count"], got_all[pair]["late"]) == (agg.count, agg.late)
                assert close_enough(got_all[pair]["sum"], agg.sum)


def _iso_ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
