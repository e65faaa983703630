"""Buckets, time parsing, cursors: the pure parts of the query API."""

from __future__ import annotations

import pytest

from query_api.errors import BadInput
from query_api.params import Cursor, Window, parse_time, time_range
from query_api.repository import iso, month_buckets, year_buckets

DEC_31 = 1767225540000  # 2025-12-31T23:59:00Z
JAN_1 = 1767225600000  # 2026-01-01T00:00:00Z


def test_month_buckets_span_the_year_boundary() -> None:
    assert list(month_buckets(DEC_31, JAN_1 + 60_000)) == ["2025-12", "2026-01"]
    # The end is exclusive: a range ending exactly at midnight stays in December.
    assert list(month_buckets(DEC_31, JAN_1)) == ["2025-12"]
    assert list(year_buckets(DEC_31, JAN_1 + 1)) == [2025, 2026]


def test_parse_time_forms() -> None:
    assert parse_time("from", "2026-01-01T00:00:00Z") == JAN_1
    assert parse_time("from", "2026-01-01T01:00:00+01:00") == JAN_1
    assert parse_time("from", str(JAN_1)) == JAN_1
    for bad in ("", "now", "2026-01-01", "1e9", "\uff11\uff12\uff13", "2026-02-30T00:00:00Z"):
        with pytest.raises(BadInput):
            parse_time("from", bad)


def test_range_rules() -> None:
    assert time_range(Window.ONE_MINUTE, None, str(JAN_1), 0).start_ms == JAN_1 - 3_600_000
    with pytest.raises(BadInput):
        time_range(Window.ONE_HOUR, str(JAN_1), str(DEC_31), 0)


def test_cursor_round_trip_and_garbage() -> None:
    cursor = Cursor(JAN_1, "temp.c")
    assert Cursor.decode(cursor.encode()) == cursor
    for bad in ("", "@@", "MTIzfA", "éé"):
        with pytest.raises(BadInput):
            Cursor.decode(bad)


def test_iso_is_utc_with_z() -> None:
    assert iso(parse_time("t", "2026-11-24T10:00:00Z")) == "2026-11-24T10:00:00Z"
    assert iso(parse_time("t", "2026-11-24T11:00:00.123+01:00")) == "2026-11-24T10:00:00.123Z"
    assert iso(None) is None
