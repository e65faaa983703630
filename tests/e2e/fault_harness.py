"""Real MQTT devices and the oracle check shared by the fault tests.

Each device is a paho client (MQTT 3.1.1, persistent session: clean_session=False, QoS 1) with its
own certificate, so what the broker has not acknowledged is resent on reconnect, as a real device
would. A run streams real-time readings with a per-device `seq` (event times up to 2 s out of
order), a fault is injected mid-stream by a thread while the stream goes on, then a clock device
keeps the watermark moving until every window of the run is final, and Cassandra's rows and the
query API are compared with the oracle over the distinct readings sent.

A reading delayed by an outage past its window's watermark is legitimately late (docs/contract.md):
then it must be in the all-time rollup and its `late` count, and missing from its 1-minute
window. So the check is: all-time rows exact; every 1m/1h row at most the oracle; per device, the
readings missing from the windows equal its late count; with no late reading, windows exact.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from cassandra.cluster import Session
from confluent_kafka import Consumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from gateway import endpoints, pki, topics
from gateway.cassandra_session import connect
from gateway.contract import telemetry_payload
from gateway.registry import DeviceRegistry, provision_device
from gateway.registry import connect as registry_session
from gateway.settings import CassandraConnection
from stack.config import StackSettings
from stack.process import ProcessSpec
from stack.services import all_services
from storage.rows import bucket_month, bucket_year
from tests.oracle import Agg, OracleReading, close_enough, expected

log = logging.getLogger(__name__)

SERVICES = {"mosquitto", "kafka", "cassandra", "keycloak", "flink", "flink-job", "writer", "bridge",
            "query-api"}
METRIC = "temperature"
WATERMARK_DELAY_S = 10


class Device:
    """One device: a persistent-session QoS 1 publisher that reconnects by itself."""

    def __init__(self, stack: StackSettings, device_id: str, identity: pki.Identity) -> None:
        self.device_id = device_id
        self.seq = 0
        self.published = 0
        # PUBACKs received. Counted in on_publish: a MessageInfo of a message published while
        # disconnected raises in is_published() although paho keeps and later sends it.
        self.acked = 0
        self._lock = threading.Lock()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id, clean_session=False,
                             protocol=mqtt.MQTTv311)
        client.tls_set(ca_certs=str(stack.pki_dir / "ca.crt"), certfile=str(identity.cert),
                       keyfile=str(identity.key))
        client.max_inflight_messages_set(1000)
        client.max_queued_messages_set(0)  # unbounded: nothing is dropped while disconnected
        client.reconnect_delay_set(min_delay=1, max_delay=4)
        client.on_publish = self._on_publish
        client.connect_async(endpoints.HOST, stack.mqtt_port, keepalive=20)
        client.loop_start()
        self.client = client

    def publish(self, ts: int, value: float) -> OracleReading:
        self.seq += 1
        payload = telemetry_payload(ts, {METRIC: value}, seq=self.seq)
        self.client.publish(topics.telemetry_topic(self.device_id), payload, qos=1)
        self.published += 1
        return OracleReading(self.device_id, ts, {METRIC: value})

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason: object,
                    properties: object) -> None:
        with self._lock:
            self.acked += 1

    def unacknowledged(self) -> int:
        with self._lock:
            return self.published - self.acked

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class Run:
    """One scenario's devices, what they sent, and the Kafka offsets before they sent it."""

    stack: StackSettings
    name: str
    devices: list[Device]
    clock: Device
    sent: list[OracleReading] = field(default_factory=list)
    start_offsets: list[TopicPartition] = field(default_factory=list)
    fault_errors: list[BaseException] = field(default_factory=list)

    @property
    def device_ids(self) -> list[str]:
        return [d.device_id for d in self.devices]


def provision(stack: StackSettings, prefix: str, count: int) -> dict[str, pki.Identity]:
    """Unique devices of tenant-a, certificates issued by the project's CA, in the registry."""
    run = uuid.uuid4().hex[:6]
    session = registry_session(CassandraConnection(cassandra_port=stack.cassandra_port))
    try:
        registry = DeviceRegistry(session)
        return {f"{prefix}-{run}-{i}": provision_device(
            stack.pki_dir, registry, f"{prefix}-{run}-{i}", "tenant-a") for i in range(count + 1)}
    finally:
        session.cluster.shutdown()


@contextlib.contextmanager
def fleet(stack: StackSettings, name: str, devices: int) -> Iterator[Run]:
    identities = provision(stack, f"fault-{name}", devices)
    clients = [Device(stack, device_id, identity) for device_id, identity in identities.items()]
    run = Run(stack, name, clients[:-1], clients[-1], start_offsets=_end_offsets(stack))
    deadline = time.monotonic() + 30
    while not all(d.client.is_connected() for d in clients):
        assert time.monotonic() < deadline, "devices did not connect"
        time.sleep(0.1)
    try:
        yield run
    finally:
        for device in clients:
            device.close()


def stream(run: Run, seconds: float, rate: float, faults: list[tuple[float, Callable[[], None]]],
           seed: int = 7, tail_s: float | None = None) -> None:
    """Publish `rate` readings/s for `seconds` across the run's devices; each fault starts in
    its own thread at its offset (s) and the stream goes on meanwhile. With `tail_s`, the stream
    also goes on until every fault is over, and `tail_s` more (faults whose length is not known
    beforehand, such as a node's restart). Returns once every fault is over and every reading is
    acknowledged by the broker."""
    rng = random.Random(seed)
    threads: list[threading.Thread] = []
    pending = sorted(faults, key=lambda f: f[0])
    started = time.monotonic()
    faults_over: float | None = None
    count = 0

    def publishing(elapsed: float) -> bool:
        nonlocal faults_over
        if tail_s is None:
            return elapsed < seconds
        if pending or any(t.is_alive() for t in threads):
            return True
        if faults_over is None:
            faults_over = elapsed
        return elapsed < max(seconds, faults_over + tail_s)

    while publishing(elapsed := time.monotonic() - started):
        while pending and pending[0][0] <= elapsed:
            threads.append(_in_thread(run, pending.pop(0)[1]))
        due = int(rate * elapsed) - count
        now_ms = int(time.time() * 1000)
        for _ in range(max(0, due)):
            device = run.devices[count % len(run.devices)]
            ts = now_ms - rng.randint(0, 2000)
            run.sent.append(device.publish(ts, round(rng.uniform(-20, 40), 2)))
            count += 1
        time.sleep(0.01)
    for thread in threads:
        thread.join(600)
    assert not run.fault_errors, f"a fault step failed: {run.fault_errors!r}"
    deadline = time.monotonic() + 240
    while (left := sum(d.unacknowledged() for d in run.devices)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == 0, f"{left} of {len(run.sent)} readings never acknowledged by the broker"
    log.info("%s: %d readings sent and acknowledged in %.0fs", run.name, len(run.sent),
             time.monotonic() - started)


def _in_thread(run: Run, step: Callable[[], None]) -> threading.Thread:
    def target() -> None:
        try:
            step()
        except BaseException as exc:
            run.fault_errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def process_spec(stack: StackSettings, name: str) -> ProcessSpec:
    """The runner's process of that name (its pid file, its log)."""
    return next(spec for service in all_services(stack) for spec in service.processes()
                if spec.name == name)


def record(stack: StackSettings, name: str, **figures: Any) -> None:
    """One line per scenario in .stack/logs/fault-tests.jsonl: what was sent, late, copied."""
    stack.log_dir.mkdir(parents=True, exist_ok=True)
    line = {"scenario": name, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    with open(stack.log_dir / "fault-tests.jsonl", "a") as out:
        out.write(json.dumps(line) + "\n")


# --- Kafka -----------------------------------------------------------------------------------

def _consumer(stack: StackSettings) -> Consumer:
    return Consumer({"bootstrap.servers": f"{endpoints.HOST}:{stack.kafka_port}",
                     "group.id": f"fault-{uuid.uuid4().hex}", "enable.auto.commit": False})


def _end_offsets(stack: StackSettings) -> list[TopicPartition]:
    consumer = _consumer(stack)
    try:
        partitions = consumer.list_topics(topics.KAFKA_READINGS, timeout=10).topics[
            topics.KAFKA_READINGS].partitions
        return [TopicPartition(topics.KAFKA_READINGS, p, consumer.get_watermark_offsets(
            TopicPartition(topics.KAFKA_READINGS, p), timeout=10)[1]) for p in partitions]
    finally:
        consumer.close()


def kafka_copies(run: Run) -> Counter[tuple[str, int, int]]:
    """How many records iot.readings holds per (device, ts, seq) of the run, since it began."""
    ends = {tp.partition: tp.offset for tp in _end_offsets(run.stack)}
    consumer = _consumer(run.stack)
    copies: Counter[tuple[str, int, int]] = Counter()
    wanted = set(run.device_ids)
    try:
        consumer.assign(run.start_offsets)
        done = {tp.partition for tp in run.start_offsets if tp.offset >= ends[tp.partition]}
        deadline = time.monotonic() + 120
        while len(done) < len(ends) and time.monotonic() < deadline:
            for message in consumer.consume(10_000, timeout=1.0):
                if message.error():
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset + 1 >= ends[partition]:
                    done.add(partition)
                if (message.key() or b"").decode() not in wanted:
                    continue
                value = json.loads(message.value() or b"{}")
                copies[(value["deviceId"], value["ts"], value.get("seq", -1))] += 1
    finally:
        consumer.close()
    return copies


# --- the oracle check ------------------------------------------------------------------------

@dataclass
class Outcome:
    sent: int
    late: int
    minute_windows: int
    hour_windows: int


def _tick_until(run: Run, done: Callable[[], bool], timeout_s: float, what: str) -> None:
    """The clock device publishes one real-time reading a second (the watermark moves only with
    readings) until done() holds."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"{run.name}: timed out after {timeout_s:.0f}s waiting for {what}"
        run.clock.publish(int(time.time() * 1000), 0.0)
        time.sleep(1.0)


def _windows(session: Session, table: str, device: str, starts: set[int]) -> dict[tuple[str, str, int], Any]:
    bucket, column = (bucket_month, "bucket_month") if table == "agg_1m" else (bucket_year, "bucket_year")
    found = {}
    for b in {bucket(s) for s in starts}:
        for row in session.execute(
                f"SELECT * FROM {table} WHERE device_id = %s AND {column} = %s", (device, b)):
            found[(device, row.metric, int(row.window_start.timestamp() * 1000))] = row
    return found


def _all_time(session: Session, devices: list[str]) -> dict[tuple[str, str], Any]:
    return {(row.device_id, row.metric): row for device in devices
            for row in session.execute("SELECT * FROM agg_all WHERE device_id = %s", (device,))}


def _same(row: Any, want: Agg) -> bool:
    return (row.count == want.count and row.min == want.min and row.max == want.max
            and close_enough(row.sum, want.sum))


def verify(run: Run, token: str, late_ok: bool = False) -> Outcome:
    """Wait until the run's windows are final, then compare Cassandra and the API with the oracle.

    late_ok: the fault may legitimately make readings late (a broker restart: devices reconnect at
    different times, and others' newer readings may move the watermark past a device's queue).
    Otherwise the readings reach Kafka in the order they were sent and none may be late."""
    minute, hour, all_time = expected(run.sent)
    last_end = max(start for _, _, start in minute) + 60_000
    cassandra = CassandraConnection(cassandra_port=run.stack.cassandra_port)
    session = connect(cassandra, keyspace=endpoints.CASSANDRA_KEYSPACE)
    cluster = session.cluster
    try:
        def complete() -> bool:
            rows = _all_time(session, run.device_ids)
            return (time.time() * 1000 > last_end + (WATERMARK_DELAY_S + 5) * 1000
                    and all(k in rows and rows[k].count >= want.count for k, want in all_time.items()))

        _tick_until(run, complete, 300, "the all-time rows and the last window")
        # The last windows close with the clock's readings; give the writer its flush.
        newest = {(d, m, s) for d, m, s in minute if s + 60_000 == last_end}
        _tick_until(run, lambda: newest <= _found(session, "agg_1m", run, minute).keys()
                    or _late_total(session, run) > 0, 60, "the newest 1m windows")
        time.sleep(3)
        got_all = _all_time(session, run.device_ids)
        assert got_all.keys() == all_time.keys()
        for key, want in all_time.items():
            row = got_all[key]
            assert _same(row, want), (run.name, key, row.count, want.count, "counted twice or lost")
            assert int(row.first_ts.timestamp() * 1000) == want.first_ts, key
            assert int(row.last_ts.timestamp() * 1000) == want.last_ts, key
        late = {d: sum(row.late for (dev, _), row in got_all.items() if dev == d) for d in run.device_ids}
        assert late_ok or not sum(late.values()), (
            f"{run.name}: {sum(late.values())} of {len(run.sent)} readings counted as late (in "
            "all-time only, missing from their 1m windows) although they reached Kafka in order")
        closed_hours = {k: v for k, v in hour.items() if k[2] + 3_600_000 <= time.time() * 1000
                        - WATERMARK_DELAY_S * 1000}
        # 1h windows are final only once their hour is over: those of a run that straddled an
        # hour's end are checked; the current hour's are not written yet.
        for table, wanted in (("agg_1m", minute), ("agg_1h", closed_hours)):
            got = _found(session, table, run, wanted)
            extra = sorted(got.keys() - wanted.keys())
            assert not extra, f"{run.name}: {table} rows the oracle has not: {extra[:5]}"
            whole = table == "agg_1m" or closed_hours == hour
            for device in run.device_ids:
                keys = [k for k in wanted if k[0] == device]
                missing = sum(wanted[k].count - (got[k].count if k in got else 0) for k in keys)
                assert all(got[k].count <= wanted[k].count for k in keys if k in got), \
                    f"{run.name}: a {table} window of {device} counts more than was sent"
                assert missing == late[device] or not whole, \
                    f"{run.name}: {device}: {missing} readings missing from {table}, {late[device]} late"
                if late[device] == 0:
                    bad = [k for k in keys if k not in got or not _same(got[k], wanted[k])]
                    assert not bad, f"{run.name}: {table} rows differ from the oracle: {bad[:5]}"
        _compare_api(run, token, session, minute, got_all)
        return Outcome(len(run.sent), sum(late.values()), len(minute), len(closed_hours))
    finally:
        cluster.shutdown()


def _found(session: Session, table: str, run: Run, wanted: dict[tuple[str, str, int], Agg]) -> dict[Any, Any]:
    starts = {k[2] for k in wanted}
    if not starts:
        return {}
    return {k: v for device in run.device_ids for k, v in _windows(session, table, device, starts).items()
            if k[2] >= min(starts)}


def _late_total(session: Session, run: Run) -> int:
    return sum(row.late for row in _all_time(session, run.device_ids).values())


def _compare_api(run: Run, token: str, session: Session, minute: dict[Any, Agg],
                 got_all: dict[Any, Any]) -> None:
    """The query API, with a real token, answers what Cassandra holds."""
    api = f"http://localhost:{run.stack.query_api_port}/query"
    headers = {"Authorization": f"Bearer {token}"}
    start, end = min(k[2] for k in minute), max(k[2] for k in minute) + 60_000
    for device in run.device_ids:
        items = httpx.get(f"{api}/{device}/all", headers=headers, timeout=10).json()["items"]
        row = got_all[(device, METRIC)]
        assert [(i["metric"], i["count"], i["late"]) for i in items] == [(METRIC, row.count, row.late)]
        body = httpx.get(f"{api}/{device}/1m", headers=headers, timeout=10,
                         params={"from": start, "to": end, "limit": 1000}).json()
        rows = _windows(session, "agg_1m", device, {k[2] for k in minute if k[0] == device})
        want = {_ms_iso(k[2]): (r.count, r.min, r.max) for k, r in rows.items() if start <= k[2] < end}
        got = {i["windowStart"]: (i["count"], i["min"], i["max"]) for i in body["items"]}
        assert got == want, f"{run.name}: the API's 1m windows of {device} differ from Cassandra's"


def _ms_iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))
