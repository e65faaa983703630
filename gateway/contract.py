"""The telemetry message (CONTRACT.md "Telemetry message") and its validation, defined once.

Devices (the emulator) build readings with `Telemetry`; the bridge turns raw MQTT payloads into
`Reading`s with `parse_telemetry`, which raises `InvalidTelemetry` carrying a named reason that
becomes the dead-letter `reason` header.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from enum import StrEnum
from typing import Any, NamedTuple

import orjson

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_METRICS = 64
MAX_FUTURE_MS = 5 * 60 * 1000
MAX_AGE_MS = 7 * 24 * 3600 * 1000

DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
TENANT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_METRIC_NAME = re.compile(METRIC_NAME_PATTERN)
_TENANT = re.compile(TENANT_PATTERN)


class Reason(StrEnum):
    """Why a message went to the dead-letter topic."""

    TOO_LARGE = "payload_too_large"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NOT_OBJECT = "not_an_object"
    BAD_TOPIC = "bad_topic"
    BAD_DEVICE_ID = "bad_device_id"
    DEVICE_MISMATCH = "device_id_mismatch"
    UNKNOWN_DEVICE = "unknown_device"
    MISSING_TS = "missing_ts"
    BAD_TS = "bad_ts"
    TS_IN_FUTURE = "ts_in_future"
    TS_TOO_OLD = "ts_too_old"
    MISSING_METRICS = "missing_metrics"
    BAD_METRICS = "bad_metrics"
    TOO_MANY_METRICS = "too_many_metrics"
    BAD_METRIC_NAME = "bad_metric_name"
    NON_FINITE_METRIC = "non_finite_metric"
    BAD_SEQ = "bad_seq"


class InvalidTelemetry(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def is_valid_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID.match(device_id))


def is_valid_tenant(tenant: str) -> bool:
    return bool(_TENANT.match(tenant))


class Reading(NamedTuple):
    """A validated reading, as it goes to Kafka `iot.readings` (a tuple: built once per message)."""

    device_id: str
    ts: int
    metrics: dict[str, float]
    seq: int | None = None

    def to_kafka_value(self, tenant: str, received_at: int) -> bytes:
        body: dict[str, Any] = {
            "deviceId": self.device_id,
            "tenant": tenant,
            "ts": self.ts,
            "metrics": self.metrics,
            "receivedAt": received_at,
        }
        if self.seq is not None:
            body["seq"] = self.seq
        # orjson: a tenth of the stdlib encoder's time, and this runs once per message.
        return orjson.dumps(body)


def telemetry_payload(
    ts: int | str, metrics: dict[str, float], seq: int | None = None, device_id: str | None = None
) -> bytes:
    """The MQTT payload a device publishes."""
    body: dict[str, Any] = {"ts": ts, "metrics": metrics}
    if seq is not None:
        body["seq"] = seq
    if device_id is not None:
        body["deviceId"] = device_id
    return orjson.dumps(body)


def parse_ts(value: object) -> int:
    """Event time as epoch ms from an integer (ms) or an RFC 3339 string with an offset."""
    if isinstance(value, bool):
        raise InvalidTelemetry(Reason.BAD_TS, "ts must be epoch ms or RFC 3339, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        if not re.match(r"^\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)$", text):
            raise InvalidTelemetry(Reason.BAD_TS, f"not RFC 3339 with offset: {text[:40]!r}")
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
        except ValueError as exc:
            raise InvalidTelemetry(Reason.BAD_TS, str(exc)) from exc
        return int(parsed.timestamp() * 1000)
    raise InvalidTelemetry(Reason.BAD_TS, f"ts must be epoch ms or RFC 3339, got {type(value).__name__}")


def _parse_metrics(value: object) -> dict[str, float]:
    if type(value) is not dict:
        raise InvalidTelemetry(Reason.BAD_METRICS, "metrics must be an object")
    if not value:
        raise InvalidTelemetry(Reason.BAD_METRICS, "metrics is empty")
    if len(value) > MAX_METRICS:
        raise InvalidTelemetry(Reason.TOO_MANY_METRICS, f"{len(value)} metrics, at most {MAX_METRICS}")
    good = _GOOD_METRIC_NAMES
    for name, raw in value.items():
        # The common case in one test: a known name and a finite float (x - x is NaN otherwise).
        if type(raw) is float and raw - raw == 0.0 and name in good:
            continue
        return _parse_metrics_slowly(value)
    return value


def _parse_metrics_slowly(value: dict[str, object]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for name, raw in value.items():
        if name not in _GOOD_METRIC_NAMES:
            if not _METRIC_NAME.match(name):
                raise InvalidTelemetry(Reason.BAD_METRIC_NAME, f"metric name {name[:70]!r}")
            if len(_GOOD_METRIC_NAMES) >= _CHECKED_MAX:
                _GOOD_METRIC_NAMES.clear()
            _GOOD_METRIC_NAMES.add(name)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidTelemetry(Reason.BAD_METRICS, f"metric {name!r} is not a number")
        number = float(raw)
        if not math.isfinite(number):
            raise InvalidTelemetry(Reason.NON_FINITE_METRIC, f"metric {name!r} is {raw!r}")
        metrics[name] = number
    return metrics


def _reject_constant(token: str) -> float:
    # json.loads accepts NaN/Infinity by default; the contract wants finite numbers only.
    raise InvalidTelemetry(Reason.NON_FINITE_METRIC, f"non-finite number {token}")


# Built once: json.loads(..., parse_constant=...) builds a new decoder on every call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode_precisely(payload: bytes) -> Any:
    """The slow path, for what orjson refused: the standard library names the reason (bad
    UTF-8, NaN/Infinity, not JSON), and reads what orjson declines but the contract judges
    on its values (1e999 is a non-finite metric, not malformed JSON)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTelemetry(Reason.NOT_UTF8, str(exc)) from exc
    try:
        return _DECODER.decode(text)
    except InvalidTelemetry:
        raise
    except (ValueError, RecursionError) as exc:
        raise InvalidTelemetry(Reason.NOT_JSON, str(exc)[:200]) from exc


# A fleet repeats the same topics and metric names in every message: each is checked once and
# remembered (bounded: a flood of distinct names only empties the memory, it never grows).
_CHECKED_MAX = 100_000
_DEVICE_OF_TOPIC: dict[str, str] = {}
_GOOD_METRIC_NAMES: set[str] = set()


def _device_of(topic: str) -> str:
    device_id = _DEVICE_OF_TOPIC.get(topic)
    if device_id is not None:
        return device_id
    from gateway.topics import device_id_from_topic

    device_id = device_id_from_topic(topic)
    if device_id is None:
        raise InvalidTelemetry(Reason.BAD_TOPIC, f"topic {topic[:100]!r}")
    if not _DEVICE_ID.match(device_id):
        raise InvalidTelemetry(Reason.BAD_DEVICE_ID, f"device id {device_id[:70]!r}")
    if len(_DEVICE_OF_TOPIC) >= _CHECKED_MAX:
        _DEVICE_OF_TOPIC.clear()
    _DEVICE_OF_TOPIC[topic] = device_id
    return device_id


def parse_telemetry(topic: str, payload: bytes, now_ms: int) -> Reading:
    """Validate one MQTT message against the contract, or raise InvalidTelemetry."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise InvalidTelemetry(Reason.TOO_LARGE, f"{len(payload)} bytes, at most {MAX_PAYLOAD_BYTES}")
    device_id = _device_of(topic)
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        body = _decode_precisely(payload)
    if not isinstance(body, dict):
        raise InvalidTelemetry(Reason.NOT_OBJECT, f"payload is a JSON {type(body).__name__}")
    claimed = body.get("deviceId")
    if claimed is not None and claimed != device_id:
        raise InvalidTelemetry(Reason.DEVICE_MISMATCH, f"deviceId {str(claimed)[:70]!r} != topic")
    if "ts" not in body:
        raise InvalidTelemetry(Reason.MISSING_TS, "ts is required")
    ts = body["ts"]
    if type(ts) is not int:  # epoch ms is the common case; anything else is normalised
        ts = parse_ts(ts)
    if ts > now_ms + MAX_FUTURE_MS:
        raise InvalidTelemetry(Reason.TS_IN_FUTURE, f"ts {ts} is {ts - now_ms} ms ahead")
    if ts < now_ms - MAX_AGE_MS:
        raise InvalidTelemetry(Reason.TS_TOO_OLD, f"ts {ts} is {now_ms - ts} ms old")
    if "metrics" not in body:
        raise InvalidTelemetry(Reason.MISSING_METRICS, "metrics is required")
    metrics = _parse_metrics(body["metrics"])
    seq = body.get("seq")
    if seq is not None and (type(seq) is not int or seq < 0):
        raise InvalidTelemetry(Reason.BAD_SEQ, f"seq {str(seq)[:30]!r} is not a non-negative integer")
    return Reading(device_id, ts, metrics, seq)
