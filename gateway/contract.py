"""The telemetry message (docs/contract.md "Telemetry message") and its validation, defined once.

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
# Mosquitto's max_packet_size (mosquitto/mosquitto.conf.tmpl, a test checks they agree): the
# largest MQTT packet a device may send, so the largest message the bridge may have to refuse.
MQTT_MAX_PACKET_BYTES = 1024 * 1024
# A refused message's DLQ record keeps at most this much of its payload (and its original size
# in a header), so any packet Mosquitto accepts makes a dead letter far below Kafka's limit.
DLQ_PAYLOAD_PREFIX_BYTES = 4 * 1024
# Kafka's per-record limit on both bridge topics (the topics' max.message.bytes, the producer's
# message.max.bytes): Kafka's own default, stated once so that the two sides cannot disagree.
KAFKA_MAX_MESSAGE_BYTES = 1_048_588
SEQ_MAX = 2**63 - 1  # the contract's seq is a non-negative int64
MAX_METRICS = 64
MAX_FUTURE_MS = 5 * 60 * 1000
MAX_AGE_MS = 7 * 24 * 3600 * 1000

# Anchored for the validators that search (FastAPI's); in Python always used with fullmatch:
# `re.match("...$")` accepts a trailing newline ("dev1\n").
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
    METRIC_OUT_OF_RANGE = "metric_out_of_range"
    BAD_SEQ = "bad_seq"
    SEQ_OUT_OF_RANGE = "seq_out_of_range"
    # Not the device's fault: the bridge failed on the message, or Kafka refused its record.
    INTERNAL_ERROR = "internal_error"
    KAFKA_REJECTED = "kafka_rejected"


class InvalidTelemetry(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


def is_valid_device_id(device_id: str) -> bool:
    return _DEVICE_ID.fullmatch(device_id) is not None


def is_valid_metric_name(name: str) -> bool:
    return _METRIC_NAME.fullmatch(name) is not None


def is_valid_tenant(tenant: str) -> bool:
    return _TENANT.fullmatch(tenant) is not None


class Reading(NamedTuple):
    """A validated reading, as it goes to Kafka `iot.readings` (a tuple: built once per message)."""

    device_id: str
    ts: int
    metrics: dict[str, float]
    seq: int | None = None

    def to_kafka_value(self, tenant: str, received_at: int, groups: tuple[str, ...] = ()) -> bytes:
        body: dict[str, Any] = {
            "deviceId": self.device_id,
            "tenant": tenant,
            "ts": self.ts,
            "metrics": self.metrics,
            "receivedAt": received_at,
        }
        if self.seq is not None:
            body["seq"] = self.seq
        if groups:
            # The aggregate keys of the device's groups when the bridge received the reading.
            body["groups"] = groups
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


_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)


def parse_ts(value: object) -> int:
    """Event time as epoch ms from an integer (ms) or an RFC 3339 string with an offset."""
    if isinstance(value, bool):
        raise InvalidTelemetry(Reason.BAD_TS, "ts must be epoch ms or RFC 3339, got a boolean")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)  # finite here: orjson and the decoder refuse NaN and infinities
    if isinstance(value, str):
        text = value.strip()
        if not _RFC3339.fullmatch(text):
            raise InvalidTelemetry(Reason.BAD_TS, f"not RFC 3339 with offset: {text[:40]!r}")
        try:
            parsed = datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
            return int(parsed.timestamp() * 1000)
        except (ValueError, OverflowError) as exc:  # year 0001 minus an offset overflows
            raise InvalidTelemetry(Reason.BAD_TS, str(exc)) from exc
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
            if type(name) is not str or _METRIC_NAME.fullmatch(name) is None:
                raise InvalidTelemetry(Reason.BAD_METRIC_NAME, f"metric name {name[:70]!r}")
            if len(_GOOD_METRIC_NAMES) >= _CHECKED_MAX:
                _GOOD_METRIC_NAMES.clear()
            _GOOD_METRIC_NAMES.add(name)
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidTelemetry(Reason.BAD_METRICS, f"metric {name!r} is not a number")
        try:
            number = float(raw)
        except OverflowError:  # an integer of hundreds of digits: no double holds it
            raise InvalidTelemetry(
                Reason.METRIC_OUT_OF_RANGE, f"metric {name!r} is outside the double range"
            ) from None
        if not math.isfinite(number):
            raise InvalidTelemetry(Reason.NON_FINITE_METRIC, f"metric {name!r} is {_short(raw)}")
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
    if _DEVICE_ID.fullmatch(device_id) is None:
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
        raise InvalidTelemetry(Reason.DEVICE_MISMATCH, f"deviceId {_short(claimed)} != topic")
    if "ts" not in body:
        raise InvalidTelemetry(Reason.MISSING_TS, "ts is required")
    ts = body["ts"]
    if type(ts) is not int:  # epoch ms is the common case; anything else is normalised
        ts = parse_ts(ts)
    if ts > now_ms + MAX_FUTURE_MS:
        raise InvalidTelemetry(
            Reason.TS_IN_FUTURE, f"ts {_short(ts)} is ahead by more than {MAX_FUTURE_MS} ms"
        )
    if ts < now_ms - MAX_AGE_MS:
        raise InvalidTelemetry(Reason.TS_TOO_OLD, f"ts {_short(ts)} is older than {MAX_AGE_MS} ms")
    if "metrics" not in body:
        raise InvalidTelemetry(Reason.MISSING_METRICS, "metrics is required")
    metrics = _parse_metrics(body["metrics"])
    seq = body.get("seq")
    if seq is not None and (type(seq) is not int or not 0 <= seq <= SEQ_MAX):
        _refuse_seq(seq)
    return Reading(device_id, ts, metrics, seq)


def _refuse_seq(seq: object) -> None:
    # orjson reads an integer literal above 2^64 as a float: still an integer the device sent.
    integral = type(seq) is int or (type(seq) is float and seq.is_integer())
    if integral and seq >= 0:  # type: ignore[operator]
        raise InvalidTelemetry(Reason.SEQ_OUT_OF_RANGE, f"seq {_short(seq)} is above 2^63 - 1")
    raise InvalidTelemetry(Reason.BAD_SEQ, f"seq {_short(seq)} is not a non-negative integer")


def _short(value: object) -> str:
    """At most 40 characters of a value for a `detail`; str() of a huge int is itself costly."""
    if type(value) is int and value.bit_length() > 128:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)[:40]
