"""Validation, tenant lookup and routing to iot.readings or the DLQ, with a fake Kafka sink."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import pytest

from bridge.forwarder import Forwarder, Token
from bridge.kafka_sink import Headers
from bridge.metrics import BridgeMetrics
from bridge.tracker import AckTracker
from gateway.contract import Reason, telemetry_payload
from gateway.registry import RegistryUnavailable
from gateway.topics import KAFKA_DLQ, KAFKA_READINGS, telemetry_topic

NOW_MS = 1_764_000_000_000


class DictTenants:
    def __init__(self, tenants: dict[str, str]) -> None:
        self.tenants = tenants

    def tenant_of(self, device_id: str) -> str | None:
        return self.tenants.get(device_id)


@dataclass
class Record:
    topic: str
    value: bytes
    key: bytes | None
    headers: Headers | None
    token: Token


class FakeSink:
    def __init__(self) -> None:
        self.records: list[Record] = []
        self.forwarder: Forwarder | None = None

    def produce(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers | None, token: Token
    ) -> None:
        self.records.append(Record(topic, value, key, headers, token))

    def confirm(self, records: list[Record]) -> None:
        assert self.forwarder is not None
        self.forwarder.confirmed([record.token for record in records])

    def confirm_all(self) -> None:
        self.confirm(self.records)


def make(tenants: dict[str, str]) -> tuple[Forwarder, FakeSink, BridgeMetrics]:
    sink = FakeSink()
    metrics = BridgeMetrics()
    forwarder = Forwarder(
        sink, DictTenants(tenants), metrics, KAFKA_READINGS, KAFKA_DLQ,
        wall_clock=lambda: NOW_MS / 1000,
    )
    sink.forwarder = forwarder
    return forwarder, sink, metrics


def one(topic: str, payload: bytes, mid: int) -> list[tuple[str, bytes, int, bool]]:
    return [(topic, payload, mid, False)]


def test_valid_reading_goes_to_readings_keyed_by_device_and_acks_after_delivery() -> None:
    forwarder, sink, metrics = make({"dev-1": "tenant-a"})
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    payload = telemetry_payload("2025-11-24T16:00:00.123+00:00", {"t": 21.5}, seq=3)
    forwarder.handle(tracker, one(telemetry_topic("dev-1"), payload, 42))
    [record] = sink.records
    assert (record.topic, record.key, record.headers) == (KAFKA_READINGS, b"dev-1", None)
    assert json.loads(record.value) == {
        "deviceId": "dev-1", "tenant": "tenant-a", "ts": 1_764_000_000_123,
        "metrics": {"t": 21.5}, "seq": 3, "receivedAt": NOW_MS,
    }
    assert acked == []  # not before Kafka confirmed
    sink.confirm_all()
    assert acked == [42]
    assert metrics.counts.produced == 1


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json", Reason.NOT_JSON),
        (b'{"metrics": {"t": 1}}', Reason.MISSING_TS),
        (b'{"ts": 1764000000000, "metrics": {"t": NaN}}', Reason.NON_FINITE_METRIC),
        (telemetry_payload(NOW_MS, {f"m{i}": 1.0 for i in range(65)}), Reason.TOO_MANY_METRICS),
        (b" " * (64 * 1024 + 1), Reason.TOO_LARGE),
        (telemetry_payload(NOW_MS, {"t": 1.0}, device_id="other"), Reason.DEVICE_MISMATCH),
        (telemetry_payload(NOW_MS + 6 * 60_000, {"t": 1.0}), Reason.TS_IN_FUTURE),
        (telemetry_payload(NOW_MS - 8 * 86_400_000, {"t": 1.0}), Reason.TS_TOO_OLD),
    ],
)
def test_invalid_messages_go_to_the_dlq_with_reason_and_original_bytes(
    payload: bytes, reason: Reason
) -> None:
    forwarder, sink, metrics = make({"dev-1": "tenant-a"})
    acked: list[int] = []
    forwarder.handle(AckTracker(acked.extend), one(telemetry_topic("dev-1"), payload, 7))
    [record] = sink.records
    headers = dict(record.headers or [])
    assert record.topic == KAFKA_DLQ
    assert record.key == b"dev-1"
    assert record.value == payload
    assert headers["reason"] == reason.value.encode()
    assert headers["mqtt_topic"] == b"devices/dev-1/telemetry"
    assert headers["received_at"] == str(NOW_MS).encode()
    sink.confirm_all()
    assert acked == [7]
    assert metrics.counts.dlq[reason] == 1


def test_unknown_device_goes_to_the_dlq() -> None:
    forwarder, sink, _ = make({})
    forwarder.handle(None, one(telemetry_topic("ghost"), telemetry_payload(NOW_MS, {"t": 1.0}), 1))
    [record] = sink.records
    assert dict(record.headers or [])["reason"] == Reason.UNKNOWN_DEVICE.value.encode()


def test_registry_outage_holds_the_message_instead_of_dead_lettering_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class FlakyTenants:
        failures = 2

        def tenant_of(self, device_id: str) -> str | None:
            if self.failures:
                self.failures -= 1
                raise RegistryUnavailable("cassandra down")
            return "tenant-a"

    monkeypatch.setattr(time, "sleep", lambda s: None)
    sink = FakeSink()
    forwarder = Forwarder(sink, FlakyTenants(), BridgeMetrics(), KAFKA_READINGS, KAFKA_DLQ)
    payload = telemetry_payload(int(time.time() * 1000), {"t": 1.0})
    forwarder.handle(None, one(telemetry_topic("dev-1"), payload, 1))
    [record] = sink.records
    assert record.topic == KAFKA_READINGS


def test_a_batch_is_acknowledged_in_arrival_order_whatever_order_kafka_confirms_in() -> None:
    forwarder, sink, metrics = make({"dev-1": "tenant-a", "dev-2": "tenant-b"})
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    batch = [
        (telemetry_topic(f"dev-{1 + i % 2}"), telemetry_payload(NOW_MS, {"t": float(i)}), 100 + i,
         False)
        for i in range(6)
    ] + [(telemetry_topic("dev-1"), b"not json", 106, False), (telemetry_topic("dev-2"),
                                                             telemetry_payload(NOW_MS, {"t": 1.0}), 0, False)]
    forwarder.handle(tracker, batch)
    assert [r.key for r in sink.records] == [b"dev-1", b"dev-2"] * 3 + [b"dev-1", b"dev-2"]
    # Kafka confirms one partition (device) before the other, the QoS 0 message in between.
    sink.confirm([r for r in sink.records if r.key == b"dev-2"])
    assert acked == []  # the first message (dev-1) is still out
    sink.confirm([r for r in sink.records if r.key == b"dev-1"])
    assert acked == list(range(100, 107))  # QoS 0 is never acknowledged
    assert metrics.counts.received == 8
    assert metrics.counts.produced == 7
    assert metrics.counts.dlq[Reason.NOT_JSON] == 1
    assert sum(metrics.counts.latency_counts) == 8
    assert tracker.in_flight == 0
