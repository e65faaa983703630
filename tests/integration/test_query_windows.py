"""5m, 15m and 1d windows of the real query API over rows written straight into Cassandra.

A fresh device gets 1-minute rows (past event times, 2026-10-29 .. 2026-11-03, across the
America/New_York change back to standard time on 2026-11-01) and the 1-hour rows the stream
would make of them. Every rolled-up answer, paged or not, equals an oracle summed here from the
1-minute rows with the standard library's own calendar arithmetic.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from cassandra.cluster import Session
from cassandra.concurrent import execute_concurrent_with_args

from harness.query_api import ms, password_token, register, running_api
from stack.config import StackSettings
from tests.integration.cassandra_harness import migrated_cql

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]
MINUTE = 60_000
HOUR = 60 * MINUTE
METRICS = ("humidity", "temperature")
FIRST, LAST = ms("2026-10-29T20:00:00Z"), ms("2026-11-03T12:00:00Z")
# (window_start, metric) -> (count, sum, min, max) of the 1-minute rows.
Cells = dict[tuple[int, str], tuple[int, float, float, float]]


@pytest.fixture(scope="module")
def cql(services: Services) -> Iterator[Session]:
    with migrated_cql(services, {"keycloak"}) as session:
        yield session


@pytest.fixture(scope="module")
def device(cql: Session) -> tuple[str, Cells]:
    """A fresh device of tenant-a with its 1m rows (a gap of a few hours) and the 1h rows of them."""
    device_id = f"qa-windows-{uuid.uuid4().hex[:10]}"
    register(cql, device_id, "tenant-a")
    rnd = random.Random(7)
    minutes: Cells = {}
    for start in range(FIRST, LAST, MINUTE):
        if ms("2026-10-31T03:00:00Z") <= start < ms("2026-10-31T07:00:00Z"):
            continue
        for metric in METRICS:
            values = [round(rnd.uniform(-10, 40), 3) for _ in range(rnd.randint(1, 4))]
            minutes[(start, metric)] = (len(values), sum(values), min(values), max(values))
    hours: Cells = {}
    for (start, metric), (count, total, low, high) in minutes.items():
        key = (start - start % HOUR, metric)
        old = hours.get(key)
        hours[key] = (
            (count, total, low, high)
            if old is None
            else (old[0] + count, old[1] + total, min(old[2], low), max(old[3], high))
        )
    for table, width, cells in (("agg_1m", MINUTE, minutes), ("agg_1h", HOUR, hours)):
        bucket_column = "bucket_month" if table == "agg_1m" else "bucket_year"
        insert = cql.prepare(
            f"INSERT INTO iot.{table} (device_id, {bucket_column}, window_start, metric, window_end,"
            " count, sum, min, max, avg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        rows = []
        for (start, metric), (count, total, low, high) in cells.items():
            moment = datetime.fromtimestamp(start / 1000, UTC)
            bucket: str | int = moment.strftime("%Y-%m") if table == "agg_1m" else moment.year
            rows.append(
                (device_id, bucket, start, metric, start + width, count, total, low, high, total / count)
            )
        for ok, result in execute_concurrent_with_args(cql, insert, rows, concurrency=64):
            assert ok, result
    return device_id, minutes


@pytest.fixture(scope="module")
def api(cql: Session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log_file = tmp_path_factory.mktemp("query-api") / "query-api.log"
    # Answer caches off: every request below is a read of the stored rows.
    with running_api(log_file, {"IOT_RESULT_CACHE_S": "0"}) as running:
        yield running.base


@pytest.fixture(scope="module")
def headers(api: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {password_token('client1')}"}


def _oracle(minutes: Cells, bucket_of: Callable[[int], tuple[int, int]], start: int, end: int) -> list[Any]:
    """(windowStart, windowEnd, metric, count, sum, min, max) of the buckets starting in [start, end)."""
    acc: dict[tuple[int, int, str], list[float]] = {}
    for (ts, metric), (count, total, low, high) in minutes.items():
        first, last = bucket_of(ts)
        if not start <= first < end:
            continue
        cell = acc.setdefault((first, last, metric), [0, 0.0, low, high])
        cell[0] += count
        cell[1] += total
        cell[2] = min(cell[2], low)
        cell[3] = max(cell[3], high)
    return [(s, e, m, *v) for (s, e, m), v in sorted(acc.items())]


def _grid(step: int) -> Callable[[int], tuple[int, int]]:
    return lambda ts: (ts - ts % step, ts - ts % step + step)


def _local_day(zone: ZoneInfo) -> Callable[[int], tuple[int, int]]:
    def bucket(ts: int) -> tuple[int, int]:
        day = datetime.fromtimestamp(ts / 1000, zone).date()
        start = datetime(day.year, day.month, day.day, tzinfo=zone)
        following = datetime.fromordinal(day.toordinal() + 1).replace(tzinfo=zone)
        return int(start.timestamp() * 1000), int(following.timestamp() * 1000)

    return bucket


def _read(api: str, headers: dict[str, str], path: str, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    while True:
        response = httpx.get(f"{api}{path}", params=params, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        body = response.json()
        items.extend(body["items"])
        if body["next"] is None:
            return items
        params = {**params, "cursor": body["next"]}


def _same(items: list[dict[str, Any]], expected: list[Any]) -> None:
    got = [
        (ms(i["windowStart"]), ms(i["windowEnd"]), i["metric"], i["count"], i["min"], i["max"]) for i in items
    ]
    assert got == [(s, e, m, c, lo, hi) for s, e, m, c, _, lo, hi in expected]
    for item, (*_, count, total, _lo, _hi) in zip(items, expected, strict=True):
        assert item["sum"] == pytest.approx(total, rel=1e-9)
        assert item["avg"] == pytest.approx(total / count, rel=1e-9)


@pytest.mark.parametrize(
    ("window", "step", "start", "end", "limit"),
    [
        ("5m", 5 * MINUTE, "2026-11-01T04:02:00Z", "2026-11-01T10:00:00Z", 10_000),
        ("5m", 5 * MINUTE, "2026-11-01T04:02:00Z", "2026-11-01T10:00:00Z", 7),
        # Across the month's end (two 1m partitions) and the gap of the 31st.
        ("15m", 15 * MINUTE, "2026-10-31T01:00:00Z", "2026-11-01T02:00:00Z", 10_000),
        ("15m", 15 * MINUTE, "2026-10-31T01:00:00Z", "2026-11-01T02:00:00Z", 5),
    ],
)
def test_minute_grids_equal_the_oracle(
    api: str,
    headers: dict[str, str],
    device: tuple[str, Cells],
    window: str,
    step: int,
    start: str,
    end: str,
    limit: int,
) -> None:
    device_id, minutes = device
    items = _read(api, headers, f"/query/{device_id}/{window}", **{"from": start, "to": end, "limit": limit})
    _same(items, _oracle(minutes, _grid(step), ms(start), ms(end)))
    assert items


@pytest.mark.parametrize(
    ("tz", "start", "end"),
    [
        ("UTC", "2026-10-30T00:00:00Z", "2026-11-03T00:00:00Z"),
        # Local days of New York: 2026-11-01 is 25 hours long (read from the 1h rows).
        ("America/New_York", "2026-10-30T00:00:00-04:00", "2026-11-03T00:00:00-05:00"),
        # Midnight at hh:30 UTC: read from the 1m rows.
        ("Asia/Kolkata", "2026-10-30T00:00:00+05:30", "2026-11-03T00:00:00+05:30"),
    ],
)
@pytest.mark.parametrize("limit", [10_000, 3])
def test_days_equal_the_oracle_in_the_callers_zone(
    api: str, headers: dict[str, str], device: tuple[str, Cells], tz: str, start: str, end: str, limit: int
) -> None:
    device_id, minutes = device
    params = {"from": start, "to": end, "tz": tz, "limit": limit}
    items = _read(api, headers, f"/query/{device_id}/1d", **params)
    _same(items, _oracle(minutes, _local_day(ZoneInfo(tz)), ms(start), ms(end)))
    assert len(items) == 4 * len(METRICS)
    if tz == "America/New_York":
        lengths = [(ms(i["windowEnd"]) - ms(i["windowStart"])) // HOUR for i in items[:: len(METRICS)]]
        assert lengths == [24, 24, 25, 24]


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("1w", {}, "window"),
        ("1d", {"tz": "Mars/Olympus_Mons"}, "Mars/Olympus_Mons"),
        ("1d", {"tz": "../../etc/passwd"}, "tz"),
        ("1h", {"tz": "Asia/Kolkata"}, "whole"),
    ],
)
def test_bad_window_or_zone_is_a_400_json(
    api: str,
    headers: dict[str, str],
    device: tuple[str, Cells],
    path: str,
    params: dict[str, str],
    named: str,
) -> None:
    response = httpx.get(f"{api}/query/{device[0]}/{path}", params=params, headers=headers, timeout=10)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert named in response.json()["detail"]
