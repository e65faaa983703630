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
from functools import cache
from zoneinfo import ZoneInfo, available_timezones

from gateway.contract import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN, InvalidTelemetry, parse_ts
from query_api.errors import BadInput
from query_api.rollup import Bucketing, Grid, LocalDays

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
    FIVE_MINUTES = "5m"
    FIFTEEN_MINUTES = "15m"
    ONE_HOUR = "1h"
    ONE_DAY = "1d"
    ALL = "all"


# Windows rolled up at query time from the stored 1m and 1h rows (rollup.py).
ROLLED = frozenset({Window.FIVE_MINUTES, Window.FIFTEEN_MINUTES, Window.ONE_DAY})
UTC_ZONE = ZoneInfo("UTC")

# Default range when `from` is absent (docs/contract.md) and the longest range one request may span:
# each month (1m) or year (1h) is one partition read, and data outlives neither TTL much. A
# rolled-up window reads its source rows in chunks and stops once its page is full.
DEFAULT_SPAN_MS = {
    Window.ONE_MINUTE: HOUR_MS,
    Window.FIVE_MINUTES: 6 * HOUR_MS,
    Window.FIFTEEN_MINUTES: 6 * HOUR_MS,
    Window.ONE_HOUR: 7 * DAY_MS,
    Window.ONE_DAY: 30 * DAY_MS,
}
MAX_SPAN_MS = {
    Window.ONE_MINUTE: 100 * DAY_MS,
    Window.FIVE_MINUTES: 31 * DAY_MS,
    Window.FIFTEEN_MINUTES: 100 * DAY_MS,
    Window.ONE_HOUR: 3660 * DAY_MS,
    Window.ONE_DAY: 3660 * DAY_MS,
}
_WINDOWS = ", ".join(w.value for w in Window)


def parse_window(value: str) -> Window:
    try:
        return Window(value)
    except ValueError:
        raise BadInput(f"window: {value[:20]!r} is not one of {_WINDOWS}") from None


@cache
def _zone_names() -> frozenset[str]:
    return frozenset(available_timezones())


def parse_zone(value: str | None) -> ZoneInfo:
    """An IANA zone name of the tz database (default UTC). Only names the database lists are
    looked up, so no string can make ZoneInfo read a file of its choosing."""
    if value is None:
        return UTC_ZONE
    if value not in _zone_names():
        raise BadInput(f"tz: {value[:64]!r} is not an IANA time zone name (such as Europe/Berlin)")
    return ZoneInfo(value)


def check_zone(window: Window, zone: ZoneInfo, span: TimeRange) -> None:
    """Refuse what the zone cannot answer. `1h` windows are whole hours of UTC, read from the
    stored 1h rows: in a zone whose offset is not a whole number of hours (Asia/Kolkata,
    UTC+05:30) they are not its hours. A day at the far ends of the calendar may not exist in
    the zone at all (9999-12-31 is already year 10000 east of UTC)."""
    if zone is UTC_ZONE or window not in (Window.ONE_HOUR, Window.ONE_DAY):
        return
    days = LocalDays(zone)
    try:
        days.end_of(days.start_of(max(span.start_ms, span.end_ms - 1)))
        whole = days.whole_hours(span.start_ms, max(span.end_ms, span.start_ms + 1))
    except (OverflowError, ValueError):
        raise BadInput(f"tz: the range reaches beyond the days {zone.key} can name") from None
    if window is Window.ONE_HOUR and not whole:
        raise BadInput(
            f"tz: {zone.key} is not a whole number of hours from UTC in this range, and 1h windows"
            " are whole UTC hours: ask for 1m, 5m, 15m or 1d in this zone"
        )


def bucketing(window: Window, zone: ZoneInfo) -> Bucketing:
    """The buckets of a rolled-up window: 5m and 15m on the UTC grid, 1d on local midnight."""
    if window is Window.ONE_DAY:
        return LocalDays(zone)
    return Grid(WINDOW_MS[window])


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


WINDOW_MS = {
    Window.ONE_MINUTE: MINUTE_MS,
    Window.FIVE_MINUTES: 5 * MINUTE_MS,
    Window.FIFTEEN_MINUTES: 15 * MINUTE_MS,
    Window.ONE_HOUR: HOUR_MS,
}


def align(span: TimeRange, window: Window, zone: ZoneInfo = UTC_ZONE) -> TimeRange:
    """The same selection with both ends rounded up to the window grid.

    Windows start on whole minutes (hours, quarter hours, local midnights), so `start <= s < end`
    holds for a window start `s` exactly when it holds with both ends rounded up to the grid."""
    if window is Window.ONE_DAY:
        days = LocalDays(zone)
        return TimeRange(_up(days, span.start_ms), _up(days, span.end_ms))
    step = WINDOW_MS[window]
    return TimeRange(-(-span.start_ms // step) * step, -(-span.end_ms // step) * step)


def _up(days: LocalDays, millis: int) -> int:
    start = days.start_of(millis)
    return start if start == millis else days.end_of(start)


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


@dataclass(frozen=True, slots=True)
class PageQuery:
    """One page of the aggregates stored under `key` (a device id, or a group's aggregate key):
    windows starting in `span`, or the all-time rows when `span` is None (window `all`)."""

    key: str
    window: Window
    span: TimeRange | None
    metric: str | None = None
    limit: int = MAX_LIMIT
    cursor: Cursor | None = None
    zone: ZoneInfo = UTC_ZONE


def page_query(
    key: str,
    window: str,
    *,
    from_: str | None,
    to: str | None,
    metric: str | None,
    limit: int,
    cursor: str | None,
    tz: str | None,
    now_ms: int,
) -> PageQuery:
    """The page a request's parameters ask for, every one checked (BadInput names the first bad one)."""
    kind = parse_window(window)
    checked_metric = check_metric(metric)
    zone = parse_zone(tz)
    span = None
    if kind is not Window.ALL:
        span = time_range(kind, from_, to, now_ms)
        check_zone(kind, zone, span)
    position = Cursor.decode(cursor) if cursor is not None else None
    return PageQuery(key, kind, span, checked_metric, limit, position, zone)
