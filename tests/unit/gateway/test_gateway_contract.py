"""gateway.contract: the telemetry message of docs/contract.md (no services)."""

from __future__ import annotations

import json

import pytest

from gateway.contract import (
    MAX_PAYLOAD_BYTES,
    InvalidTelemetry,
    Reason,
    is_valid_device_id,
    is_valid_metric_name,
    is_valid_tenant,
    parse_telemetry,
    telemetry_payload,
)

NOW = 1_764_000_000_000
TOPIC = "devices/dev-1/telemetry"


def test_round_trip_of_the_emulator_payload() -> None:
    payload = telemetry_payload(NOW, {"temperature": 21.5, "humidity": 40.2}, seq=17)
    reading = parse_telemetry(TOPIC, payload, NOW)
    assert (reading.device_id, reading.ts, reading.seq) == ("dev-1", NOW, 17)
    assert reading.metrics == {"temperature": 21.5, "humidity": 40.2}
    value = json.loads(reading.to_kafka_value("tenant-a", NOW + 5))
    assert value == {"deviceId": "dev-1", "tenant": "tenant-a", "ts": NOW,
                     "metrics": {"temperature": 21.5, "humidity": 40.2}, "seq": 17,
                     "receivedAt": NOW + 5}


def test_rfc3339_timestamp_with_offset() -> None:
    payload = b'{"ts": "2025-11-24T17:00:00+01:00", "metrics": {"t": 1}}'
    assert parse_telemetry(TOPIC, payload, NOW).ts == 1_764_000_000_000


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        (TOPIC, b"\xff\xfe", Reason.NOT_UTF8),
        (TOPIC, b"not json", Reason.NOT_JSON),
        (TOPIC, b"[1]", Reason.NOT_OBJECT),
        ("devices/dev-1/other", b"{}", Reason.BAD_TOPIC),
        ("devices/d%20/telemetry", b"{}", Reason.BAD_DEVICE_ID),
        (TOPIC, b'{"deviceId": "dev-2", "ts": 1, "metrics": {"t": 1}}', Reason.DEVICE_MISMATCH),
        (TOPIC, b'{"metrics": {"t": 1}}', Reason.MISSING_TS),
        (TOPIC, b'{"ts": "2025-11-24T16:00:00", "metrics": {"t": 1}}', Reason.BAD_TS),
        (TOPIC, b'{"ts": true, "metrics": {"t": 1}}', Reason.BAD_TS),
        (TOPIC, json.dumps({"ts": NOW + 301_000, "metrics": {"t": 1}}).encode(),
         Reason.TS_IN_FUTURE),
        (TOPIC, json.dumps({"ts": NOW - 8 * 86_400_000, "metrics": {"t": 1}}).encode(),
         Reason.TS_TOO_OLD),
        (TOPIC, json.dumps({"ts": NOW}).encode(), Reason.MISSING_METRICS),
        (TOPIC, json.dumps({"ts": NOW, "metrics": {}}).encode(), Reason.BAD_METRICS),
        (TOPIC, json.dumps({"ts": NOW, "metrics": {"t": "1"}}).encode(), Reason.BAD_METRICS),
        (TOPIC, json.dumps({"ts": NOW, "metrics": {"t": True}}).encode(), Reason.BAD_METRICS),
        (TOPIC, json.dumps({"ts": NOW, "metrics": {"a b": 1}}).encode(), Reason.BAD_METRIC_NAME),
        (TOPIC, b'{"ts": 1764000000000, "metrics": {"t": NaN}}', Reason.NON_FINITE_METRIC),
        (TOPIC, json.dumps({"ts": NOW, "metrics": {f"m{i}": 1 for i in range(65)}}).encode(),
         Reason.TOO_MANY_METRICS),
        (TOPIC, json.dumps({"ts": NOW, "metrics": {"t": 1}, "seq": -1}).encode(), Reason.BAD_SEQ),
        (TOPIC, b" " * (MAX_PAYLOAD_BYTES + 1), Reason.TOO_LARGE),
    ],
)
def test_contract_violations_have_a_reason(topic: str, payload: bytes, reason: Reason) -> None:
    with pytest.raises(InvalidTelemetry) as caught:
        parse_telemetry(topic, payload, NOW)
    assert caught.value.reason == reason


def test_limits_are_inclusive() -> None:
    metrics = {f"m{i}": float(i) for i in range(64)}
    assert len(parse_telemetry(TOPIC, telemetry_payload(NOW + 300_000, metrics), NOW).metrics) == 64


@pytest.mark.parametrize("device_id", ["a", "A-b_9", "x" * 64,
                                       "123e4567-e89b-12d3-a456-426614174000"])
def test_valid_device_ids(device_id: str) -> None:
    assert is_valid_device_id(device_id)


@pytest.mark.parametrize("device_id", ["", "x" * 65, "a/b", "a+b", "a#", "ä", "dev1\n", "\ndev1"])
def test_invalid_device_ids(device_id: str) -> None:
    assert not is_valid_device_id(device_id)


def test_tenant_format() -> None:
    assert is_valid_tenant("tenant-a") and is_valid_tenant("t1")
    assert not is_valid_tenant("Tenant") and not is_valid_tenant("-a") and not is_valid_tenant("")
    assert not is_valid_tenant("tenant-a\n")


def test_names_and_topics_full_match() -> None:
    assert is_valid_metric_name("temp.c") and not is_valid_metric_name("temp\n")
    for topic in ("devices/dev1/telemetry\n", "devices/dev1\n/telemetry"):
        with pytest.raises(InvalidTelemetry) as caught:
            parse_telemetry(topic, telemetry_payload(NOW, {"t": 1.0}), NOW)
        assert caught.value.reason in (Reason.BAD_TOPIC, Reason.BAD_DEVICE_ID)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b'{"ts": %d, "metrics": {"t": 1%s}}' % (NOW, b"0" * 400), Reason.METRIC_OUT_OF_RANGE),
        (b'{"ts": %d, "metrics": {"t": -1%s}}' % (NOW, b"0" * 400), Reason.METRIC_OUT_OF_RANGE),
        (b'{"ts": %d, "metrics": {"t": 1}, "seq": %d}' % (NOW, 2**64), Reason.SEQ_OUT_OF_RANGE),
        (b'{"ts": %d, "metrics": {"t": 1}, "seq": %d}' % (NOW, 2**63), Reason.SEQ_OUT_OF_RANGE),
        (b'{"ts": %d, "x": "\\ud800", "metrics": {"t": 1}, "seq": %d}' % (NOW, 2**64),
         Reason.SEQ_OUT_OF_RANGE),
        (b'{"ts": %d, "metrics": {"t": 1}, "seq": 1.5}' % NOW, Reason.BAD_SEQ),
        (b'{"ts": "0001-01-01T00:00:00+01:00", "metrics": {"t": 1}}', Reason.TS_TOO_OLD),
    ],
)
def test_numbers_out_of_range_have_reasons_of_their_own(payload: bytes, reason: Reason) -> None:
    with pytest.raises(InvalidTelemetry) as caught:
        parse_telemetry(TOPIC, payload, NOW)
    assert caught.value.reason == reason
    assert len(caught.value.detail) < 200


def test_the_largest_seq_is_valid_and_encodes() -> None:
    payload = b'{"ts": %d, "metrics": {"t": 1}, "seq": %d}' % (NOW, 2**63 - 1)
    assert json.loads(parse_telemetry(TOPIC, payload, NOW).to_kafka_value("t", NOW))["seq"] == 2**63 - 1
