"""The whole path: devices publish over MQTT with their certificates; the bridge, Kafka, the Flink
job, the writer and Cassandra carry the readings; the query API answers with a real token.

Readings are published in real time (the pipeline's watermark follows the clock), up to 10 s out
of order, with malformed messages among them. Complete 1-minute windows and the all-time rollup
must equal what tests/oracle.py computes from what was published; 1-hour windows cannot close in
a test's minutes and are checked against the same oracle in test_aggregation_oracle.py.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from confluent_kafka import Consumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion

from gateway import endpoints, pki, topics
from gateway.contract import telemetry_payload
from gateway.registry import DeviceRegistry, provision_device
from gateway.registry import connect as registry_session
from gateway.settings import CassandraConnection
from harness.bridge import header_map
from harness.query_api import password_token
from stack.config import StackSettings
from tests.oracle import OracleReading, close_enough, expected

pytestmark = pytest.mark.e2e

SERVICES = {"mosquitto", "kafka", "cassandra", "keycloak", "flink", "flink-job", "writer", "bridge",
            "query-api"}
DEVICES = 3
SECONDS = 140  # covers at least one whole minute after the first partial one


@pytest.fixture(scope="module")
def stack(services: Any) -> Iterator[StackSettings]:
    with services(SERVICES) as settings:
        yield settings


@pytest.fixture(scope="module")
def devices(stack: StackSettings) -> dict[str, pki.Identity]:
    run = uuid.uuid4().hex[:8]
    session = registry_session(CassandraConnection(cassandra_port=stack.cassandra_port))
    try:
        registry = DeviceRegistry(session)
        return {f"e2e-{run}-{i}": provision_device(stack.pki_dir, registry, f"e2e-{run}-{i}", "tenant-a")
                for i in range(DEVICES)}
    finally:
        session.cluster.shutdown()


def _client(stack: StackSettings, device_id: str, identity: pki.Identity) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=device_id)
    client.tls_set(ca_certs=str(stack.pki_dir / "ca.crt"), certfile=str(identity.cert),
                   keyfile=str(identity.key))
    client.connect(endpoints.HOST, stack.mqtt_port)
    client.loop_start()
    return client


def _dlq_end(bootstrap: str) -> list[TopicPartition]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex}"})
    try:
        metadata = consumer.list_topics(topics.KAFKA_DLQ, timeout=10)
        return [TopicPartition(topics.KAFKA_DLQ, p, consumer.get_watermark_offsets(
            TopicPartition(topics.KAFKA_DLQ, p), timeout=10)[1])
            for p in metadata.topics[topics.KAFKA_DLQ].partitions]
    finally:
        consumer.close()


def _dlq_reasons(bootstrap: str, start: list[TopicPartition], device_ids: set[str]) -> list[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"e2e-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    consumer.assign(start)
    reasons = []
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error():
                continue
            if (message.key() or b"").decode() in device_ids:
                reasons.append(header_map(message.headers())["reason"].decode())
    finally:
        consumer.close()
    return reasons


def _publish(stack: StackSettings, devices: dict[str, pki.Identity]) -> list[OracleReading]:
    """Real-time readings, 1/s per device, each up to 9 s older than the newest already sent."""
    rng = random.Random(11)
    clients = {d: _client(stack, d, identity) for d, identity in devices.items()}
    published: list[OracleReading] = []
    try:
        start = time.time()
        pending: list[tuple[float, OracleReading]] = []
        seq = 0
        while time.time() - start < SECONDS:
            now = time.time()
            for device in clients:
                reading = OracleReading(device, int(now * 1000) - rng.randint(0, 9_000),
                                        {"temperature": round(rng.uniform(15, 30), 2),
                                         "humidity": round(rng.uniform(30, 70), 2)})
                pending.append((now + rng.uniform(0, 1.5), reading))
            due = [item for item in pending if item[0] <= now]
            pending = [item for item in pending if item[0] > now]
            for _, reading in due:
                seq += 1
                info = clients[reading.device_id].publish(
                    topics.telemetry_topic(reading.device_id),
                    telemetry_payload(reading.ts, reading.metrics, seq=seq), qos=1)
                info.wait_for_publish(10)
                published.append(reading)
            time.sleep(max(0.0, 1.0 - (time.time() - now)))
        bad = next(iter(clients))
        for payload in (b"not json", json.dumps({"metrics": {"t": 1}}).encode(),
                        telemetry_payload(int(time.time() * 1000) - 8 * 86_400_000, {"t": 1.0})):
            clients[bad].publish(topics.telemetry_topic(bad), payload, qos=1).wait_for_publish(10)
    finally:
        for client in clients.values():
            client.loop_stop()
            client.disconnect()
    return published


def _get(token: str, device: str, window: str, **params: Any) -> httpx.Response:
    return httpx.get(f"http://localhost:{endpoints.QUERY_API_PORT}/query/{device}/{window}",
                     params=params, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def test_published_readings_come_back_through_the_api(
    stack: StackSettings, devices: dict[str, pki.Identity]
) -> None:
    bootstrap = f"{endpoints.HOST}:{stack.kafka_port}"
    dlq_start = _dlq_end(bootstrap)
    published = _publish(stack, devices)
    minute, _, all_time = expected(published)
    last_minute = max(r.ts for r in published) // 60_000 * 60_000
    # Windows the watermark has certainly closed: it trails every device's newest reading by
    # 10 s, and nothing newer arrives after the test (a window ending in those last 10 s stays
    # open until traffic resumes).
    watermark = min(max(r.ts for r in published if r.device_id == d) for d in devices) - 10_000
    complete = {k: v for k, v in minute.items() if k[2] + 60_000 <= watermark}
    token = password_token("client1")
    start = min(k[2] for k in minute)

    def windows(device: str) -> dict[tuple[str, str, int], dict[str, Any]]:
        items = _get(token, device, "1m", **{"from": start, "to": last_minute, "limit": 1000}).json()
        return {(device, i["metric"], _ms(i["windowStart"])): i for i in items["items"]}

    deadline = time.monotonic() + 120
    got: dict[tuple[str, str, int], dict[str, Any]] = {}
    while time.monotonic() < deadline:
        got = {k: v for device in devices for k, v in windows(device).items()}
        if complete.keys() <= got.keys():
            break
        time.sleep(2)
    assert complete.keys() <= got.keys(), f"missing windows: {sorted(complete.keys() - got.keys())[:5]}"
    for key, want in complete.items():
        item = got[key]
        assert (item["count"], item["min"], item["max"]) == (want.count, want.min, want.max), key
        assert close_enough(item["sum"], want.sum) and close_enough(item["avg"], want.avg), key

    # The all-time rollup counts every valid reading once, none of the malformed ones.
    def rollup(device: str) -> dict[str, dict[str, Any]]:
        return {i["metric"]: i for i in _get(token, device, "all").json()["items"]}

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rows = {(d, m): i for d in devices for m, i in rollup(d).items()}
        if all(k in rows and rows[k]["count"] == v.count for k, v in all_time.items()):
            break
        time.sleep(2)
    assert rows.keys() == all_time.keys()
    for pair, agg in all_time.items():
        assert (rows[pair]["count"], rows[pair]["min"], rows[pair]["max"]) == (agg.count, agg.min, agg.max)
        assert close_enough(rows[pair]["sum"], agg.sum)
        assert rows[pair]["late"] == 0

    # Another tenant sees nothing, exactly as for a device that does not exist.
    other = password_token("client2")
    device = next(iter(devices))
    assert _get(other, device, "1m").status_code == 404
    mine, unknown = _get(other, device, "all"), _get(other, "no-such-device", "all")
    assert mine.status_code == unknown.status_code == 404
    assert mine.text.replace(device, "X") == unknown.text.replace("no-such-device", "X")

    reasons = _dlq_reasons(bootstrap, dlq_start, set(devices))
    assert sorted(reasons) == sorted(["not_json", "missing_ts", "ts_too_old"]), reasons


def _ms(iso: str) -> int:
    from datetime import datetime

    return int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000)
