"""5m, 15m and 1d windows through the real repository over a fake Cassandra session: every page
equals an oracle summed straight from the stored rows, across a DST change and in a zone whose
days are not whole UTC hours; the route's 400s for bad windows and zones."""

from __future__ import annotations

import asyncio
import bisect
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from query_api.errors import BadInput
from query_api.main import create_app
from query_api.params import (
    UTC_ZONE,
    Cursor,
    PageQuery,
    TimeRange,
    Window,
    align,
    check_zone,
    parse_window,
    parse_zone,
)
from query_api.repository import AggregateRepository, Page, iso
from tests.unit.query_api.test_query_api_app import SETTINGS, FakeRepository, Keys, token

MINUTE = 60_000
HOUR = 60 * MINUTE
NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")
METRICS = ("humidity", "temperature")


class Prepared:
    def __init__(self, cql: str) -> None:
        self.cql = cql


class FakeStore:
    """The aggregate tables as dicts; answers the repository's four window statements."""

    def __init__(self) -> None:
        # (table, device, partition) -> list of (start, end, metric, count, sum, min, max, avg)
        self.rows: dict[tuple[str, str, str | int], list[tuple[Any, ...]]] = {}
        self.reads = 0

    async def prepare(self, cql: str) -> Prepared:
        return Prepared(cql)

    async def execute(self, statement: Prepared, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        self.reads += 1
        cql = statement.cql
        if "FROM devices" in cql or "agg_all" in cql:
            return [("tenant-a",)] if "devices" in cql else []
        table = "agg_1m" if "agg_1m" in cql else "agg_1h"
        device, bucket, *rest = params
        rows = self.rows.get((table, device, bucket), [])
        rows.sort(key=lambda r: (r[0], r[2]))
        if "(window_start, metric) >" in cql:
            start, after_metric, end, limit = rest
            chosen = [r for r in rows if (r[0], r[2]) > (start, after_metric) and r[0] < end]
        elif "window_start > ?" in cql:
            start, end, metric, limit = rest
            chosen = [r for r in rows if start < r[0] < end and r[2] == metric]
        elif "metric = ?" in cql:
            start, end, metric, limit = rest
            chosen = [r for r in rows if start <= r[0] < end and r[2] == metric]
        else:
            start, end, limit = rest
            chosen = [r for r in rows if start <= r[0] < end]
        return chosen[:limit]

    def write(
        self, table: str, device: str, start: int, width: int, metric: str, values: list[float]
    ) -> None:
        total = sum(values)
        row = (
            start,
            start + width,
            metric,
            len(values),
            total,
            min(values),
            max(values),
            total / len(values),
        )
        self.rows.setdefault((table, device, _bucket(table, start)), []).append(row)


def _bucket(table: str, start: int) -> str | int:
    moment = datetime.fromtimestamp(start / 1000, UTC)
    return moment.strftime("%Y-%m") if table == "agg_1m" else moment.year


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def _readings(seed: int, start: int, end: int) -> list[tuple[int, str, float]]:
    """A reading every 30 s of each metric in [start, end), with a gap of a few hours."""
    rnd = random.Random(seed)
    out = []
    for ts in range(start, end, 30_000):
        if start + 5 * HOUR <= ts < start + 8 * HOUR:
            continue
        for metric in METRICS:
            out.append((ts, metric, round(rnd.uniform(-20, 40), 2)))
    return out


def _store(readings: list[tuple[int, str, float]]) -> FakeStore:
    """1m and 1h rows of the readings, as the stream writes them."""
    store = FakeStore()
    for table, width in (("agg_1m", MINUTE), ("agg_1h", HOUR)):
        cells: dict[tuple[int, str], list[float]] = {}
        for ts, metric, value in readings:
            cells.setdefault((ts - ts % width, metric), []).append(value)
        for (start, metric), values in cells.items():
            store.write(table, "dev-a", start, width, metric, values)
    return store


def _oracle(
    readings: list[tuple[int, str, float]], starts: list[int], span: TimeRange
) -> list[dict[str, Any]]:
    """Items straight from the readings: bucket boundaries given as the list of starts."""
    cells: dict[tuple[int, str], list[float]] = {}
    for ts, metric, value in readings:
        index = bisect.bisect_right(starts, ts) - 1
        if index < 0 or index == len(starts) - 1:
            continue
        cells.setdefault((starts[index], metric), []).append(value)
    items = []
    for (start, metric), values in sorted(cells.items()):
        if not span.start_ms <= start < span.end_ms:
            continue
        end = starts[bisect.bisect_right(starts, start)]
        items.append(
            {
                "windowStart": iso(start),
                "windowEnd": iso(end),
                "metric": metric,
                "count": len(values),
                "sum": sum(values),
                "min": min(values),
                "max": max(values),
                "avg": sum(values) / len(values),
            }
        )
    return items


def _local_midnights(zone: ZoneInfo, first_day: str, days: int) -> list[int]:
    day = datetime.fromisoformat(first_day).date()
    return [
        int(datetime.combine(day + timedelta(days=n), datetime.min.time(), zone).timestamp() * 1000)
        for n in range(days + 1)
    ]


async def _read_all(
    repo: AggregateRepository,
    window: Window,
    span: TimeRange,
    zone: ZoneInfo,
    limit: int,
    metric: str | None = None,
) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(10_000):
        page = await repo.read(PageQuery("dev-a", window, span, metric, limit, cursor, zone))
        assert isinstance(page.items, list) and len(page.items) <= limit
        items.extend(page.items)
        if page.next_cursor is None:
            return items
        cursor = Cursor.decode(page.next_cursor)
    raise AssertionError("paging did not end")


def _close(items: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert [(i["windowStart"], i["windowEnd"], i["metric"], i["count"]) for i in items] == [
        (i["windowStart"], i["windowEnd"], i["metric"], i["count"]) for i in expected
    ]
    for got, want in zip(items, expected, strict=True):
        for field in ("sum", "min", "max", "avg"):
            assert got[field] == pytest.approx(want[field], rel=1e-9, abs=1e-9), (got, want)


async def _repository(store: FakeStore) -> AggregateRepository:
    repo = AggregateRepository(store, 60.0, 1.0)  # type: ignore[arg-type]
    await repo.prepare()
    return repo


@pytest.mark.parametrize("limit", [10_000, 7, 1])
@pytest.mark.parametrize(
    ("window", "step"), [(Window.FIVE_MINUTES, 5 * MINUTE), (Window.FIFTEEN_MINUTES, 15 * MINUTE)]
)
def test_minute_grids_equal_the_oracle_on_every_page(window: Window, step: int, limit: int) -> None:
    # Across a month boundary, so two 1m partitions are read; `from` not on the grid.
    start, end = _ms("2026-10-31T20:00:00+00:00"), _ms("2026-11-01T10:00:00+00:00")
    readings = _readings(1, start, end)
    store = _store(readings)
    span = TimeRange(start + 7 * MINUTE + 123, end - 2 * MINUTE)
    expected = _oracle(readings, list(range(start, end + step, step)), span)
    items = asyncio.run(_async_read(store, window, span, UTC_ZONE, limit))
    _close(items, expected)


async def _async_read(
    store: FakeStore, window: Window, span: TimeRange, zone: ZoneInfo, limit: int, metric: str | None = None
) -> list[dict[str, Any]]:
    repo = await _repository(store)
    return await _read_all(repo, window, span, zone, limit, metric)


@pytest.mark.parametrize("limit", [10_000, 3])
@pytest.mark.parametrize(
    ("zone", "first_day", "hours"),
    [
        (NY, "2026-03-06", (24, 24, 23, 24)),  # spring forward on 2026-03-08
        (NY, "2026-10-30", (24, 24, 25, 24)),  # fall back on 2026-11-01
        (UTC_ZONE, "2026-03-06", (24, 24, 24, 24)),
        (KOLKATA, "2026-03-06", (24, 24, 24, 24)),  # from 1m rows: midnight is hh:30 UTC
    ],
)
def test_days_follow_local_midnight(
    zone: ZoneInfo, first_day: str, hours: tuple[int, ...], limit: int
) -> None:
    midnights = _local_midnights(zone, first_day, 4)
    readings = _readings(2, midnights[0] - 3 * HOUR, midnights[-1] + 3 * HOUR)
    store = _store(readings)
    span = TimeRange(midnights[0] - HOUR, midnights[-1])
    items = asyncio.run(_async_read(store, Window.ONE_DAY, span, zone, limit))
    expected = _oracle(readings, midnights, TimeRange(midnights[0], midnights[-1]))
    _close(items, expected)
    lengths = sorted(
        {
            (_ms(i["windowEnd"].replace("Z", "+00:00")) - _ms(i["windowStart"].replace("Z", "+00:00")))
            // HOUR
            for i in items
        }
    )
    assert lengths == sorted(set(hours))


def test_kolkata_days_are_read_from_minute_rows_new_york_from_hour_rows() -> None:
    for zone, table in ((KOLKATA, "agg_1m"), (NY, "agg_1h")):
        midnights = _local_midnights(zone, "2026-03-06", 2)
        store = FakeStore()
        store.write(table, "dev-a", midnights[0] - midnights[0] % HOUR + HOUR, MINUTE, "t", [1.0])
        items = asyncio.run(
            _async_read(store, Window.ONE_DAY, TimeRange(midnights[0], midnights[-1]), zone, 10)
        )
        assert [i["count"] for i in items] == [1], zone


def test_one_metric_pages_like_all_of_them() -> None:
    start = _ms("2026-11-20T00:00:00+00:00")
    readings = _readings(3, start, start + 12 * HOUR)
    store = _store(readings)
    span = TimeRange(start, start + 12 * HOUR)
    items = asyncio.run(_async_read(store, Window.FIFTEEN_MINUTES, span, UTC_ZONE, 5, metric="temperature"))
    expected = [
        i
        for i in _oracle(readings, list(range(start, start + 13 * HOUR, 15 * MINUTE)), span)
        if i["metric"] == "temperature"
    ]
    _close(items, expected)


def test_a_page_reads_only_the_rows_it_needs() -> None:
    start = _ms("2026-11-01T00:00:00+00:00")
    readings = _readings(4, start, start + 24 * HOUR)
    store = _store(readings)
    span = TimeRange(start, start + 24 * HOUR)

    async def one_page() -> int:
        repo = await _repository(store)
        before = store.reads
        page = await repo.read(PageQuery("dev-a", Window.FIVE_MINUTES, span, None, 4, None))
        assert isinstance(page.items, list) and len(page.items) == 4 and page.next_cursor
        return store.reads - before

    assert asyncio.run(one_page()) == 1  # 1,440 x 2 rows in the range, one chunk read


def test_an_empty_range_is_an_empty_page() -> None:
    store = FakeStore()
    span = TimeRange(_ms("2026-11-01T00:01:00+00:00"), _ms("2026-11-01T00:04:00+00:00"))
    assert asyncio.run(_async_read(store, Window.FIVE_MINUTES, span, UTC_ZONE, 10)) == []


def test_windows_and_zones_are_parsed_strictly() -> None:
    assert parse_window("15m") is Window.FIFTEEN_MINUTES
    assert parse_zone(None) is UTC_ZONE and parse_zone("UTC") is UTC_ZONE
    assert parse_zone("America/New_York").key == "America/New_York"
    for window in ("2m", "1D", "15m\n", "", "1h "):
        with pytest.raises(BadInput, match="window"):
            parse_window(window)
    for name in (
        "Mars/Olympus",
        "../../etc/passwd",
        "/etc/localtime",
        "america/new_york",
        "UTC\n",
        "",
        "x" * 300,
    ):
        with pytest.raises(BadInput, match="tz"):
            parse_zone(name)


def test_hours_in_a_half_hour_zone_are_refused() -> None:
    span = TimeRange(_ms("2026-11-01T00:00:00+00:00"), _ms("2026-11-02T00:00:00+00:00"))
    with pytest.raises(BadInput, match=r"Asia/Kolkata.*whole"):
        check_zone(Window.ONE_HOUR, KOLKATA, span)
    check_zone(Window.ONE_HOUR, NY, span)
    check_zone(Window.ONE_DAY, KOLKATA, span)
    check_zone(Window.FIFTEEN_MINUTES, KOLKATA, span)
    with pytest.raises(BadInput, match="tz"):
        check_zone(
            Window.ONE_DAY, ZoneInfo("Asia/Tokyo"), TimeRange(253_402_300_000_000, 253_402_300_799_999)
        )


def test_day_keys_are_aligned_to_local_midnight() -> None:
    midnight = _ms("2026-11-01T00:00:00-04:00")
    aligned = align(TimeRange(midnight - 1, midnight + 1), Window.ONE_DAY, NY)
    assert aligned == TimeRange(midnight, _ms("2026-11-02T00:00:00-05:00"))
    assert align(TimeRange(1, 5 * MINUTE), Window.FIVE_MINUTES) == TimeRange(5 * MINUTE, 5 * MINUTE)


class ZoneRecorder(FakeRepository):
    def __init__(self) -> None:
        super().__init__()
        self.zones: list[ZoneInfo] = []

    async def read(self, query: PageQuery) -> Page:
        self.zones.append(query.zone)
        return await super().read(query)


@pytest.fixture
def client() -> Iterator[tuple[TestClient, ZoneRecorder]]:
    repo, keys = ZoneRecorder(), Keys()
    app = create_app(SETTINGS, repository=repo, jwks_fetcher=keys.fetch)
    with TestClient(app) as test_client:
        yield test_client, repo


@pytest.mark.parametrize(
    ("path", "params", "named"),
    [
        ("/query/dev-a/2m", {}, "window"),
        ("/query/dev-a/1D", {}, "window"),
        ("/query/dev-a/1d", {"tz": "Mars/Olympus"}, "Mars/Olympus"),
        ("/query/dev-a/1d", {"tz": "../../../etc/passwd"}, "tz"),
        ("/query/dev-a/1d", {"tz": ""}, "tz"),
        ("/query/dev-a/1h", {"tz": "Asia/Kolkata"}, "whole"),
        ("/query/dev-a/5m", {"from": "2026-01-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}, "31 days"),
    ],
)
def test_bad_windows_and_zones_are_a_400_json(
    client: tuple[TestClient, ZoneRecorder], path: str, params: dict[str, str], named: str
) -> None:
    response = client[0].get(path, params=params, headers={"Authorization": f"Bearer {token()}"})
    assert response.status_code == 400, response.text
    assert named in response.json()["detail"]


def test_new_windows_default_ranges_and_zone_reach_the_repository(
    client: tuple[TestClient, ZoneRecorder],
) -> None:
    test_client, repo = client
    headers = {"Authorization": f"Bearer {token()}"}
    for window in ("5m", "15m", "1d"):
        response = test_client.get(f"/query/dev-a/{window}", headers=headers)
        assert response.status_code == 200 and response.json()["window"] == window
    spans = [call[2] for call in repo.calls]
    assert [s.end_ms - s.start_ms for s in spans] == [6 * HOUR, 6 * HOUR, 30 * 24 * HOUR]
    # Zones are part of the cache keys: the same URL in two zones is two reads.
    for tz in ("America/New_York", "Europe/Berlin", "America/New_York"):
        assert test_client.get("/query/dev-a/1d", params={"tz": tz}, headers=headers).status_code == 200
    assert [zone.key for zone in repo.zones[-2:]] == ["America/New_York", "Europe/Berlin"]
