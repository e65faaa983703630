"""Validation, tenant lookup and routing to iot.readings or the DLQ, with a fake Kafka sink."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import pytest

from bridge.forwarder import Forwarder, Token
from bridge.kafka_sink import Headers
from bridge.metrics import BridgeMetrics
from bridge.tracker import AckTracker
from gateway.contract import DLQ_PAYLOAD_PREFIX_BYTES, Reading, Reason, telemetry_payload
from gateway.registry import RegistryUnavailable
from gateway.topics import KAFKA_DLQ, KAFKA_READINGS, telemetry_topic

NOW_MS = 1_764_000_000_000


class DictTenants:
    def __init__(self, tenants: dict[str, str]) -> None:
        self.tenants = tenants

    def tenant_of(self, device_id: str) -> str | None:
        return self.tenants.get(device_id)

    def cached(self, device_id: str) -> str | None:
        return self.tenants.get(device_id)

    def needs_lookup(self, device_id: str) -> bool:
        return False


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


def dlq_record(payload: bytes, topic: str = "devices/dev-1/telemetry") -> tuple[Record, list[int]]:
    forwarder, sink, _ = make({"dev-1": "tenant-a"})
    acked: list[int] = []
    forwarder.handle(AckTracker(acked.extend), one(topic, payload, 7))
    [record] = sink.records
    assert record.topic == KAFKA_DLQ
    sink.confirm_all()
    assert acked == [7]
    return record, acked


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"ts": 1764000000000, "metrics": {"t": 1' + b"0" * 400 + b"}}", Reason.METRIC_OUT_OF_RANGE),
        (b'{"ts": 1764000000000, "metrics": {"t": 1e999}}', Reason.NON_FINITE_METRIC),
        (b'{"ts": 1764000000000, "metrics": {"t": 1}, "seq": 18446744073709551616}',
         Reason.SEQ_OUT_OF_RANGE),
        (b'{"ts": 1764000000000, "metrics": {"t": 1}, "seq": 9223372036854775808}',
         Reason.SEQ_OUT_OF_RANGE),
        # orjson refuses the lone surrogate, the standard library reads it, and 2^64 as an int:
        # that int must not reach the encoder (a TypeError there closed the connection).
        (b'{"ts": 1764000000000, "note": "\\ud800", "metrics": {"t": 1}, '
         b'"seq": 18446744073709551616}', Reason.SEQ_OUT_OF_RANGE),
        (b'{"ts": 1764000000000, "metrics": {"t\\n": 1}}', Reason.BAD_METRIC_NAME),
        (b'{"ts": 1' + b"0" * 400 + b', "metrics": {"t": 1}}', Reason.TS_IN_FUTURE),
    ],
)
def test_poison_numbers_are_dead_lettered_with_their_own_reason(payload: bytes, reason: Reason) -> None:
    record, _ = dlq_record(payload)
    assert dict(record.headers or [])["reason"] == reason.value.encode()
    assert record.value == payload


def test_a_device_id_with_a_trailing_newline_is_invalid() -> None:
    record, _ = dlq_record(telemetry_payload(NOW_MS, {"t": 1.0}), "devices/dev-1\n/telemetry")
    assert dict(record.headers or [])["reason"] == Reason.BAD_DEVICE_ID.value.encode()
    record, _ = dlq_record(telemetry_payload(NOW_MS, {"t": 1.0}), "devices/dev-1/telemetry\n")
    assert dict(record.headers or [])["reason"] == Reason.BAD_TOPIC.value.encode()


def test_an_oversized_payload_is_dead_lettered_as_a_prefix_with_its_size() -> None:
    payload = b"x" * (1024 * 1024 - 200)
    record, _ = dlq_record(payload)
    headers = dict(record.headers or [])
    assert headers["reason"] == Reason.TOO_LARGE.value.encode()
    assert headers["payload_bytes"] == str(len(payload)).encode()
    assert record.value == payload[:DLQ_PAYLOAD_PREFIX_BYTES]


def test_anything_unforeseen_is_an_internal_error_with_a_detail(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> bytes:
        raise TypeError("Integer exceeds 64-bit range")

    monkeypatch.setattr(Reading, "to_kafka_value", broken)
    forwarder, sink, metrics = make({"dev-1": "tenant-a"})
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    good = telemetry_payload(NOW_MS, {"t": 1.0})
    forwarder.handle(tracker, one(telemetry_topic("dev-1"), good, 7))
    [record] = sink.records
    headers = dict(record.headers or [])
    assert record.topic == KAFKA_DLQ and headers["reason"] == b"internal_error"
    assert headers["detail"] == b"TypeError: Integer exceeds 64-bit range"
    sink.confirm_all()
    assert acked == [7] and metrics.counts.dlq[Reason.INTERNAL_ERROR] == 1


def test_a_reading_kafka_refuses_is_dead_lettered_and_a_refused_dead_letter_dropped() -> None:
    forwarder, sink, metrics = make({"dev-1": "tenant-a"})
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    forwarder.handle(tracker, one(telemetry_topic("dev-1"), telemetry_payload(NOW_MS, {"t": 1.0}), 7)
                     + one(telemetry_topic("dev-1"), b"junk", 8))
    reading, dead = sink.records
    forwarder.rejected(reading.topic, reading.value, reading.key, reading.token, "MSG_SIZE_TOO_LARGE")
    retry = sink.records[-1]
    assert retry.topic == KAFKA_DLQ
    assert dict(retry.headers or [])["reason"] == Reason.KAFKA_REJECTED.value.encode()
    forwarder.rejected(dead.topic, dead.value, dead.key, dead.token, "MSG_SIZE_TOO_LARGE")
    assert metrics.counts.dropped == 1 and acked == []  # 8 waits for 7, still in the DLQ's hands
    sink.confirm([retry])
    assert acked == [7, 8]


def test_a_failing_dlq_produce_is_a_counted_drop_not_a_stall() -> None:
    class BrokenSink(FakeSink):
        def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers | None,
                    token: Token) -> None:
            if topic == KAFKA_DLQ:
                raise RuntimeError("no")
            super().produce(topic, value, key, headers, token)

    sink = BrokenSink()
    metrics = BridgeMetrics()
    forwarder = Forwarder(sink, DictTenants({}), metrics, KAFKA_READINGS, KAFKA_DLQ)
    acked: list[int] = []
    forwarder.handle(AckTracker(acked.extend), one(telemetry_topic("dev-1"), b"junk", 5))
    assert acked == [5] and metrics.counts.dropped == 1


def test_unknown_device_goes_to_the_dlq() -> None:
    forwarder, sink, _ = make({})
    forwarder.handle(None, one(telemetry_topic("ghost"), telemetry_payload(NOW_MS, {"t": 1.0}), 1))
    [record] = sink.records
    assert dict(record.headers or [])["reason"] == Reason.UNKNOWN_DEVICE.value.encode()


async def test_registry_outage_pauses_reading_and_holds_the_messages_in_order() -> None:
    class FlakyTenants:
        failures = 2
        known: dict[str, str] = {}

        def tenant_of(self, device_id: str) -> str | None:
            if self.failures:
                self.failures -= 1
                raise RegistryUnavailable("cassandra down")
            self.known[device_id] = "tenant-a"
            return "tenant-a"

        def cached(self, device_id: str) -> str | None:
            return self.known.get(device_id)

        def needs_lookup(self, device_id: str) -> bool:
            return device_id not in self.known

    sink = FakeSink()
    forwarder = Forwarder(sink, FlakyTenants(), BridgeMetrics(), KAFKA_READINGS, KAFKA_DLQ)
    sink.forwarder = forwarder
    flow: list[str] = []
    forwarder.pause_reading = lambda: flow.append("pause")
    forwarder.resume_reading = lambda: flow.append("resume")
    acked: list[int] = []
    tracker = AckTracker(acked.extend)
    now = int(time.time() * 1000)
    forwarder.handle(tracker, [(telemetry_topic("dev-1"), b"not json", 1, False),
                               (telemetry_topic("dev-1"), telemetry_payload(now, {"t": 1.0}), 2, False)])
    forwarder.handle(tracker, one(telemetry_topic("dev-1"), telemetry_payload(now, {"t": 2.0}), 3))
    assert flow == ["pause"] and [r.topic for r in sink.records] == [KAFKA_DLQ]
    ticks = 0
    while forwarder.waiting_for_registry:  # the loop is free meanwhile: this test runs on it
        await asyncio.sleep(0.05)
        ticks += 1
    assert ticks >= 3  # two failures, backed off 0.2 s then 0.4 s
    assert flow == ["pause", "resume"]
    assert [r.topic for r in sink.records] == [KAFKA_DLQ, KAFKA_READINGS, KAFKA_READINGS]
    sink.confirm_all()
    assert acked == [1, 2, 3]


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
