"""Parsing of the query parameters the schema cannot express: times, ranges, the paging cursor.

Every failure is a BadInput (400) with a message naming the parameter; nothing here can raise
anything else for any input string, which is what keeps bad input away from a 5xx.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from enum import StrEnum

from gateway.contract import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN, InvalidTelemetry, parse_ts
from query_api.errors import BadInput

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
# Cassandra timestamps reach further, but 1970..9999 is what RFC 3339 and our buckets can name.
MAX_TS_MS = 253_402_300_799_999
MAX_LIMIT = 10_000
# Every check is a fullmatch: `match` with a trailing `$` also accepts "dev1\n" (`$` matches
# before a final newline), a second spelling of the same id, metric or cursor.
_EPOCH_MS = re.compile(r"[0-9]{1,15}")
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)
_METRIC = re.compile(METRIC_NAME_PATTERN)
# The shape of an RFC 3339 time, checked whole before parse_ts checks the calendar.
_RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})"
)
# What Cursor.encode produces: unpadded URL-safe base64 (the decoder would skip other bytes).
_CURSOR = re.compile(r"[A-Za-z0-9_-]{1,200}")


class Window(StrEnum):
    ONE_MINUTE = "1m"
    ONE_HOUR = "1h"
    ALL = "all"


# Default range when `from` is absent (CONTRACT.md) and the longest range one request may span:
# each month (1m) or year (1h) is one partition read, and data outlives neither TTL much.
DEFAULT_SPAN_MS = {Window.ONE_MINUTE: HOUR_MS, Window.ONE_HOUR: 7 * DAY_MS}
MAX_SPAN_MS = {Window.ONE_MINUTE: 100 * DAY_MS, Window.ONE_HOUR: 3660 * DAY_MS}


@dataclass(frozen=True, slots=True)
class TimeRange:
    """[start_ms, end_ms): window starts at or after `from` and before `to`."""

    start_ms: int
    end_ms: int


def parse_time(name: str, value: str) -> int:
    """Epoch milliseconds from digits or an RFC 3339 string with an offset."""
    if _EPOCH_MS.fullmatch(value):
        millis = int(value)
    else:
        try:
            if not _RFC3339.fullmatch(value):
                raise ValueError(value)
            millis = parse_ts(value)
        except (InvalidTelemetry, ValueError, OverflowError) as exc:
            raise BadInput(
                f"{name}: expected RFC 3339 with offset or epoch milliseconds, got {value[:40]!r}"
            ) from exc
    if not 0 <= millis <= MAX_TS_MS:
        raise BadInput(f"{name}: {value[:40]!r} is outside 1970-01-01 .. 9999-12-31")
    return millis


def time_range(window: Window, from_: str | None, to: str | None, now_ms: int) -> TimeRange:
    end = parse_time("to", to) if to is not None else now_ms
    start = parse_time("from", from_) if from_ is not None else max(0, end - DEFAULT_SPAN_MS[window])
    if start > end:
        raise BadInput("from is after to")
    if window in MAX_SPAN_MS and end - start > MAX_SPAN_MS[window]:
        days = MAX_SPAN_MS[window] // DAY_MS
        raise BadInput(f"range too long for window {window.value}: at most {days} days")
    return TimeRange(start, end)


WINDOW_MS = {Window.ONE_MINUTE: MINUTE_MS, Window.ONE_HOUR: HOUR_MS}


def align(span: TimeRange, window: Window) -> TimeRange:
    """The same selection with both ends rounded up to the window grid.

    Windows start on whole minutes (hours) of UTC, so `start <= s < end` holds for a window start
    `s` exactly when it holds with both ends rounded up to the grid."""
    step = WINDOW_MS[window]
    return TimeRange(-(-span.start_ms // step) * step, -(-span.end_ms // step) * step)


def check_device_id(device_id: str) -> str:
    if not _DEVICE_ID.fullmatch(device_id):
        raise BadInput(f"deviceId: {device_id[:70]!r} does not match {DEVICE_ID_PATTERN}")
    return device_id


def check_metric(metric: str | None) -> str | None:
    if metric is not None and not _METRIC.fullmatch(metric):
        raise BadInput(f"metric: {metric[:70]!r} does not match {METRIC_NAME_PATTERN}")
    return metric


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the last page stopped: after (window_start_ms, metric); window_start 0 for `all`."""

    window_start_ms: int
    metric: str

    def encode(self) -> str:
        raw = f"{self.window_start_ms}|{self.metric}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        try:
            if not _CURSOR.fullmatch(token):
                raise ValueError(token)
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            start, metric = raw.split("|", 1)
            if not _EPOCH_MS.fullmatch(start) or int(start) > MAX_TS_MS or not _METRIC.fullmatch(metric):
                raise ValueError(raw)
            return cls(int(start), metric)
        except (ValueError, binascii.Error) as exc:
            raise BadInput("cursor: not a cursor this API returned") from exc
