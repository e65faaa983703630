"""Query-time roll-ups: exact combination, zone-aligned days across DST, the source choice."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from query_api.rollup import (
    HOUR_MS,
    MINUTE_MS,
    Grid,
    LocalDays,
    after_cursor,
    bucket_span,
    combine,
)

NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")


def _ms(text: str) -> int:
    return int(datetime.fromisoformat(text).astimezone(UTC).timestamp() * 1000)


def test_five_minutes_combine_exactly() -> None:
    rows = [(i * MINUTE_MS, "t", 2, float(i), float(i) - 1, float(i) + 1) for i in range(10)]
    items = combine(rows, Grid(5 * MINUTE_MS))
    assert [(i["windowStart"], i["windowEnd"]) for i in items] == [
        (0, 5 * MINUTE_MS),
        (5 * MINUTE_MS, 10 * MINUTE_MS),
    ]
    first = items[0]
    assert (first["count"], first["sum"], first["min"], first["max"]) == (10, 10.0, -1.0, 5.0)
    assert first["avg"] == 1.0  # sum / count, not a mean of the 1m averages


def test_items_sorted_by_start_then_metric() -> None:
    rows = [(MINUTE_MS, "b", 1, 1.0, 1.0, 1.0), (0, "c", 1, 1.0, 1.0, 1.0), (0, "a", 1, 1.0, 1.0, 1.0),
            (20 * MINUTE_MS, "a", 1, 1.0, 1.0, 1.0)]
    items = combine(rows, Grid(15 * MINUTE_MS))
    assert [(i["windowStart"], i["metric"]) for i in items] == [
        (0, "a"), (0, "b"), (0, "c"), (15 * MINUTE_MS, "a")
    ]


def test_new_york_days_across_the_spring_change_are_23_hours() -> None:
    days = LocalDays(NY)
    start = days.start_of(_ms("2026-03-08T12:00:00+00:00"))
    assert start == _ms("2026-03-08T00:00:00-05:00")
    assert days.end_of(start) - start == 23 * HOUR_MS
    autumn = days.start_of(_ms("2026-11-01T12:00:00+00:00"))
    assert days.end_of(autumn) - autumn == 25 * HOUR_MS


def test_a_day_sums_its_hours_in_local_time() -> None:
    days = LocalDays(NY)
    first = _ms("2026-03-07T00:00:00-05:00")
    hours = [(first + h * HOUR_MS, "t", 1, 1.0, 1.0, 1.0) for h in range(24 + 23 + 24)]
    items = combine(hours, days)
    assert [i["count"] for i in items] == [24, 23, 24]
    assert [i["windowEnd"] - i["windowStart"] for i in items] == [24 * HOUR_MS, 23 * HOUR_MS, 24 * HOUR_MS]


def test_whole_hours_tells_which_rows_a_day_can_be_built_from() -> None:
    span = (_ms("2026-03-01T00:00:00Z"), _ms("2026-03-20T00:00:00Z"))
    assert LocalDays(NY).whole_hours(*span)
    assert LocalDays(ZoneInfo("UTC")).whole_hours(*span)
    assert not LocalDays(KOLKATA).whole_hours(*span)


def test_bucket_span_covers_only_buckets_starting_in_range() -> None:
    grid = Grid(15 * MINUTE_MS)
    assert bucket_span(grid, 1, 31 * MINUTE_MS) == (15 * MINUTE_MS, 45 * MINUTE_MS)
    assert bucket_span(grid, 0, 15 * MINUTE_MS) == (0, 15 * MINUTE_MS)
    assert bucket_span(grid, 1, 2) is None


def test_after_cursor_is_strict() -> None:
    items = combine([(0, "a", 1, 1.0, 1.0, 1.0), (0, "b", 1, 1.0, 1.0, 1.0)], Grid(5 * MINUTE_MS))
    assert [i["metric"] for i in after_cursor(items, 0, "a")] == ["b"]


@given(st.lists(st.tuples(st.integers(0, 2000), st.integers(1, 5), st.floats(-1e6, 1e6)), max_size=200))
def test_combination_equals_an_oracle_over_the_readings(cells: list[tuple[int, int, float]]) -> None:
    """Each (minute, count, value) stands for `count` readings of `value`: the 15m roll-up of the
    1m rows equals the aggregate computed directly over the readings."""
    rows = [(minute * MINUTE_MS, "m", n, n * v, v, v) for minute, n, v in cells]
    random.Random(0).shuffle(rows)
    oracle: dict[int, list[float]] = {}
    for minute, n, v in cells:
        bucket = minute // 15 * 15 * MINUTE_MS
        cell = oracle.setdefault(bucket, [0, 0.0, v, v])
        cell[0] += n
        cell[1] += n * v
        cell[2], cell[3] = min(cell[2], v), max(cell[3], v)
    got = {i["windowStart"]: i for i in combine(rows, Grid(15 * MINUTE_MS))}
    assert set(got) == set(oracle)
    for bucket, (count, total, low, high) in oracle.items():
        item = got[bucket]
        assert item["count"] == count
        assert abs(item["sum"] - total) <= 1e-6 * max(1.0, abs(total))
        assert (item["min"], item["max"]) == (low, high)
