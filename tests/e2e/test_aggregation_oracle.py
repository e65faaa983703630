"""The Flink job through the real stack, against the oracle.

A deterministic data set (several devices and metrics, readings up to 10 s out of order, late
readings sent after their windows were final) goes into a Kafka topic of this test; a job instance
of this test aggregates it into the real aggregate topics; the real writer puts the rows into
Cassandra; the rows must equal what tests/oracle.py computes. Run twice: undisturbed, and with the
task manager killed mid-stream (the job restores from its checkpoint).

Some readings reach Kafka two or three times, as a bridge redelivers them: at once, next to the
first copy, and again after their window closed (also across the task manager's restart), and so
do some late readings. The oracle is over the distinct readings: a copy counts nowhere.

A fleet that stops: with the bridge's heartbeats (bridge/heartbeat.py, run here) its last
1-minute window is in Cassandra within the watermark delay + 15 s of the window's end.
"""

from __future__ import annotations

import contextlib
import json
import logging
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
from gateway.cassandra_session import connect
from gateway.settings import CassandraConnection, KafkaConnection
from stack import process
from stack.config import StackSettings
from storage.rows import bucket_month, bucket_year
from tests.oracle import Agg, OracleReading, close_enough, expected

pytestmark = pytest.mark.e2e
log = logging.getLogger(__name__)

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
    cassandra = CassandraConnection(cassandra_port=stack.cassandra_port)
    session = connect(cassandra, keyspace=endpoints.CASSANDRA_KEYSPACE)
    cluster = session.cluster
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
            stream.append(OracleReading(f"oracle-{run}-{d}", ts, metrics, seq=step))
    # Delivered out of order by up to 10 s, never more: none of these is late.
    stream.sort(key=lambda r: r.ts + rng.randint(0, 9_000))
    late = [
        OracleReading(f"oracle-{run}-{d}", base + 30_000 + d, {"temperature": 99.0 + d}, late=True,
                      seq=10_000 + d)
        for d in range(DEVICES)
    ]
    # Pushes the watermark past every window of the stream; its own windows stay open.
    closer = [OracleReading(f"oracle-{run}-clock", base + 2 * 3_600_000 + 120_000, {"tick": 1.0})]
    return stream, late, closer


def _produce(bootstrap: str, topic: str, readings: list[OracleReading]) -> int:
    """Produce the readings; return how many records that was."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    for r in readings:
        value: dict[str, Any] = {"deviceId": r.device_id, "tenant": "tenant-a", "ts": r.ts,
                                 "metrics": r.metrics, "receivedAt": int(time.time() * 1000)}
        if r.seq is not None:
            value["seq"] = r.seq
        producer.produce(topic, key=r.device_id.encode(), value=json.dumps(value).encode())
        producer.poll(0)
    assert producer.flush(30) == 0
    return len(readings)


def _with_copies(readings: list[OracleReading], every: int) -> list[OracleReading]:
    """Every `every`-th reading twice in a row, and every (3 * every)-th three times."""
    out = []
    for i, r in enumerate(readings):
        out.append(r)
        out.extend([r] * ((i % every == 0) + (i % (3 * every) == 0)))
    return out


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
        sent = _produce(bootstrap, topic, _with_copies(stream[:half], 5))
        if kill_taskmanager:
            _restart_taskmanager(stack, rest, job_id)
            _wait(lambda: _job_running(rest, settings.job_name), 180, "the job to restore")
        sent += _produce(bootstrap, topic, _with_copies(stream[half:], 5))
        # Late readings only count as late once the watermark passed their windows. After a
        # restore the watermark starts over (Flink does not checkpoint it), so wait until the
        # stream's last windows are written: the watermark is then past every early window.
        newest = max(k[2] for k in minute)
        settled = {k for k in minute if newest - 180_000 <= k[2] <= newest - 120_000}
        _wait(lambda: settled <= _windows(cql, "agg_1m", devices, {k[2] for k in settled}).keys(),
              180, "the stream's last windows in Cassandra")
        # Late copies: readings of the first half again, their windows long closed (and, with the
        # task manager killed, from before the restore), and the late readings twice.
        sent += _produce(bootstrap, topic, [*stream[: half : 7], *_with_copies(late, 1)])
        time.sleep(3)
        _produce(bootstrap, topic, closer)
        copies = sent - len(stream) - len(late)
        assert copies > len(stream) // 4

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
        # The copies did reach the job, which says it removed them (Flink's counters restart with
        # the job: after a restore they hold the copies seen since).
        if kill_taskmanager:
            _wait(lambda: (rest.duplicates_removed(job_id) or 0) > 0, 30, "copies removed")
        else:
            _wait(lambda: rest.duplicates_removed(job_id) == copies, 30, f"{copies} copies removed")
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
    from harness.query_api import password_token

    with services({"kafka", "cassandra", "flink", "writer", "keycloak", "query-api"}) as settings:
        session = connect(
            CassandraConnection(cassandra_port=settings.cassandra_port), keyspace=endpoints.CASSANDRA_KEYSPACE
        )
        cluster = session.cluster
        try:
            run, minute, hour, all_time = _run_oracle(settings, session, kill_taskmanager=False)
        finally:
            cluster.shutdown()
        devices = sorted({k[0] for k in all_time})
        registry_cql = registry_session(CassandraConnection(cassandra_port=settings.cassandra_port))
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


async def test_a_silent_fleet_closes_its_last_window(stack: StackSettings, cql: Session) -> None:
    """Devices send in real time, then all stop. Only the bridge's heartbeats (run here as the
    bridge runs them: each partition, every second, while nothing arrives) move the watermark;
    the last minute's row must reach Cassandra within watermark delay + 15 s of its end."""
    import asyncio

    from bridge.heartbeat import Heartbeat, producer_config, topic_partitions
    from stack.services.flink import kafka_connector_jar

    run = uuid.uuid4().hex[:8]
    bootstrap = f"{endpoints.HOST}:{stack.kafka_port}"
    topic = f"test.silent.{run}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)])[topic].result(30)
    settings = FlinkJobSettings(
        job_name=f"silent-{run}", source_topic=topic, consumer_group=f"silent-{run}",
        kafka_bootstrap=bootstrap, rest_url=f"http://localhost:{stack.flink_rest_port}",
        connector_jar=kafka_connector_jar(stack), checkpoint_interval_s=2,
        checkpoint_dir=stack.stack_dir / "flink" / "checkpoints",
    )
    devices = [f"silent-{run}-{d}" for d in range(3)]
    rest = FlinkRest(settings.rest_url)
    job_id = submit(settings)
    beats = Producer(producer_config(KafkaConnection(kafka_bootstrap=bootstrap), 1.0))
    readings = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    produced = {"n": 0}
    heartbeat = Heartbeat(beats, topic, await asyncio.to_thread(topic_partitions, beats, topic), 1.0,
                          activity=lambda: produced["n"])
    stop = asyncio.Event()
    beating = asyncio.create_task(heartbeat.run(stop))
    try:
        await asyncio.to_thread(_wait, lambda: _job_running(rest, settings.job_name), 120,
                                "the job to run")
        # Send for a while, stopping 5-20 s into a minute: that minute is the last window.
        sent: dict[tuple[str, int], int] = {}
        started = time.time()
        while True:
            now = time.time()
            if now - started >= 15 and 5 <= now % 60 <= 20:
                break
            for device in devices:
                ts = int(now * 1000)
                value = {"deviceId": device, "tenant": "tenant-a", "ts": ts, "seq": ts,
                         "metrics": {"temperature": 20.0}, "receivedAt": ts}
                readings.produce(topic, key=device.encode(), value=json.dumps(value).encode())
                sent[(device, ts - ts % 60_000)] = sent.get((device, ts - ts % 60_000), 0) + 1
            readings.poll(0)
            produced["n"] += 1
            await asyncio.sleep(1.0)
        assert readings.flush(10) == 0
        last_start = max(start for _, start in sent)
        last_end_s = (last_start + 60_000) / 1000
        deadline_s = last_end_s + settings.watermark_delay_s + 15
        want = {device: n for (device, start), n in sent.items() if start == last_start}
        while time.time() < deadline_s + 5:
            rows = await asyncio.to_thread(_windows, cql, "agg_1m", devices, {last_start})
            got = {device: row.count for (device, _, start), row in rows.items()
                   if start == last_start}
            if got == want:
                break
            await asyncio.sleep(0.5)
        arrived_s = time.time()
        log.info("silent fleet: last window in Cassandra %.1fs after its end", arrived_s - last_end_s)
        assert got == want, f"the last window ({last_start}) is not in Cassandra: {got} != {want}"
        assert arrived_s <= deadline_s, (
            f"the last window arrived {arrived_s - last_end_s:.1f}s after its end, "
            f"more than {settings.watermark_delay_s} + 15 s")
        assert heartbeat.delivered > 0
    finally:
        stop.set()
        await asyncio.wait_for(beating, 10)
        with contextlib.suppress(httpx.HTTPError):
            rest.cancel(job_id)
        rest.close()
        admin.delete_topics([topic])
