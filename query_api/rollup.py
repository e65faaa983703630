"""Windows rolled up at query time: 5m and 15m from the 1m rows, 1d from the 1h (or 1m) rows.

count, sum, min and max combine exactly; avg is sum / count of the combined window, never an
average of averages. Buckets are aligned to the caller's time zone: 5m and 15m on the UTC grid
(every zone in the tz database is offset from UTC by a whole number of quarter hours, so its own
quarter hours are UTC's), 1d on local midnight, so a day is 23 or 25 hours long across a
daylight-saving change.

Which stored rows a rolled-up window reads: a 1d bucket is a union of 1h rows only when every
local midnight of the range falls on a whole UTC hour (Asia/Kolkata's does not, UTC+5:30); then
it is read from the 1m rows instead. An hour in such a zone is not a union of stored 1h rows at
all, so `1h` with a zone whose offset is not whole hours is refused (params.check_zone).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS

# (window_start_ms, metric, count, sum, min, max) of one stored 1m or 1h row.
SourceRow = tuple[int, str, int, float, float, float]
Item = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Grid:
    """Fixed-length buckets on the UTC grid (5m, 15m)."""

    step_ms: int

    def start_of(self, millis: int) -> int:
        return millis - millis % self.step_ms

    def end_of(self, start_ms: int) -> int:
        return start_ms + self.step_ms


@dataclass(frozen=True, slots=True)
class LocalDays:
    """Calendar days of one time zone: [local midnight, next local midnight)."""

    zone: ZoneInfo

    def start_of(self, millis: int) -> int:
        return _midnight_ms(self._local_date(millis), self.zone)

    def end_of(self, start_ms: int) -> int:
        return _midnight_ms(self._local_date(start_ms) + timedelta(days=1), self.zone)

    def _local_date(self, millis: int) -> date:
        return datetime.fromtimestamp(millis / 1000, UTC).astimezone(self.zone).date()

    def midnights(self, start_ms: int, end_ms: int) -> Iterator[int]:
        """Every bucket start from the bucket holding start_ms up to end_ms."""
        current = self.start_of(start_ms)
        while current < end_ms:
            yield current
            current = self.end_of(current)

    def whole_hours(self, start_ms: int, end_ms: int) -> bool:
        """Whether every day boundary in the range is a whole UTC hour (1h rows then suffice)."""
        last = self.end_of(self.start_of(max(start_ms, end_ms - 1)))
        return all(b % HOUR_MS == 0 for b in (*self.midnights(start_ms, end_ms), last))


Bucketing = Grid | LocalDays


def _midnight_ms(day: date, zone: ZoneInfo) -> int:
    # A zone may skip midnight itself (a DST change at 00:00, as in America/Santiago): the day
    # then starts at the first instant that exists, which fold=0 of the wall-clock time gives.
    local = datetime.combine(day, time(0), tzinfo=zone)
    utc = local.astimezone(UTC)
    if utc.astimezone(zone).date() != day:
        utc = (local + timedelta(hours=1)).astimezone(UTC)
    return int(utc.timestamp() * 1000)


def bucket_span(bucketing: Bucketing, start_ms: int, end_ms: int) -> tuple[int, int] | None:
    """The source range to read for the buckets whose start lies in [start_ms, end_ms): from the
    first such bucket's start to the last one's end; None when no bucket starts in the range."""
    first = bucketing.start_of(start_ms)
    if first < start_ms:
        first = bucketing.end_of(first)
    if first >= end_ms:
        return None
    last = bucketing.start_of(end_ms - 1)
    return first, bucketing.end_of(last)


def combine(rows: Iterable[SourceRow], bucketing: Bucketing) -> list[Item]:
    """Rolled-up items sorted by windowStart, then metric (the contract's order), as the API's
    item dicts without the ISO formatting of the bounds (windowStart/windowEnd in epoch ms)."""
    acc: dict[tuple[int, str], list[Any]] = {}
    starts: dict[int, int] = {}
    for start, metric, count, total, low, high in rows:
        bucket = starts.get(start)
        if bucket is None:
            bucket = starts[start] = bucketing.start_of(start)
        key = (bucket, metric)
        cell = acc.get(key)
        if cell is None:
            acc[key] = [count, total, low, high]
        else:
            cell[0] += count
            cell[1] += total
            if low < cell[2]:
                cell[2] = low
            if high > cell[3]:
                cell[3] = high
    items: list[Item] = []
    for (bucket, metric), (count, total, low, high) in sorted(acc.items()):
        items.append({
            "windowStart": bucket,
            "windowEnd": bucketing.end_of(bucket),
            "metric": metric,
            "count": int(count),
            "sum": total,
            "min": low,
            "max": high,
            "avg": total / count if count else 0.0,
        })
    return items


def after_cursor(items: list[Item], window_start_ms: int, metric: str) -> list[Item]:
    """The items strictly after a keyset cursor (window start, metric)."""
    return [i for i in items if (i["windowStart"], i["metric"]) > (window_start_ms, metric)]
