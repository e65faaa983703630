import json
from datetime import UTC, datetime

import pytest

from gateway import topics
from storage.rows import Row, bucket_month, bucket_year, dedupe, groups, to_row


def _window(**overrides: object) -> bytes:
    body = {"deviceId": "d1", "metric": "t", "windowStart": 1764000000000, "windowEnd": 1764000060000,
            "count": 4, "sum": 10.0, "min": 1.0, "max": 4.0}
    body.update(overrides)
    return json.dumps(body).encode()


def test_minute_row_has_month_bucket_and_avg() -> None:
    row = to_row(topics.KAFKA_AGG_1M, _window())
    assert row.table == "agg_1m"
    device, bucket, start, metric, end, count, total, low, high, avg = row.values
    assert (device, bucket, metric, count) == ("d1", "2025-11", "t", 4)
    assert (total, low, high, avg) == (10.0, 1.0, 4.0, 2.5)
    assert start == datetime(2025, 11, 24, 16, 0, tzinfo=UTC)
    assert end == datetime(2025, 11, 24, 16, 1, tzinfo=UTC)


def test_hour_row_has_year_bucket() -> None:
    row = to_row(topics.KAFKA_AGG_1H, _window(windowEnd=1764003600000))
    assert row.table == "agg_1h" and row.values[1] == 2025


def test_all_time_row() -> None:
    value = json.dumps({"deviceId": "d1", "metric": "t", "count": 2, "sum": 3.0, "min": 1.0, "max": 2.0,
                        "firstTs": 1764000000000, "lastTs": 1764000001000, "late": 1}).encode()
    row = to_row(topics.KAFKA_AGG_ALL, value)
    assert row.table == "agg_all" and row.key == ("d1", "t")
    assert row.values[2:7] == (2, 3.0, 1.0, 2.0, 1.5) and row.values[-1] == 1


@pytest.mark.parametrize("bad", [b"not json", b"[]", _window(sum="x"), _window(count=None)])
def test_bad_records_raise_value_errors(bad: bytes) -> None:
    with pytest.raises((ValueError, KeyError, TypeError)):
        to_row(topics.KAFKA_AGG_1M, bad)


def test_buckets_are_utc() -> None:
    # 2026-01-01T00:30 UTC is still 2025-12-31 in New York: the bucket must not care.
    ms = int(datetime(2026, 1, 1, 0, 30, tzinfo=UTC).timestamp() * 1000)
    assert bucket_month(ms) == "2026-01" and bucket_year(ms) == 2026


def test_dedupe_keeps_last_all_time_and_first_window() -> None:
    rows = [
        Row("agg_all", ("d", "m"), (1,)), Row("agg_1m", ("d", "m", 0), ("first",)),
        Row("agg_all", ("d", "m"), (2,)), Row("agg_1m", ("d", "m", 0), ("second",)),
    ]
    kept = dedupe(rows)
    assert [r.values for r in kept] == [("first",), (2,)]


def test_groups_are_one_partition_each_and_keep_the_order() -> None:
    minute = [to_row(topics.KAFKA_AGG_1M, _window(deviceId=d, metric=m)) for d in ("d1", "d2") for m in "abc"]
    later = to_row(topics.KAFKA_AGG_1M, _window(deviceId="d1", metric="a", windowStart=1764000060000,
                                                 windowEnd=1764000120000))
    hour = to_row(topics.KAFKA_AGG_1H, _window(deviceId="d1", metric="a", windowEnd=1764003600000))
    all_time = [
        to_row(topics.KAFKA_AGG_ALL, json.dumps({
            "deviceId": "d1", "metric": m, "count": 1, "sum": 1.0, "min": 1.0, "max": 1.0,
            "firstTs": 1764000000000, "lastTs": 1764000000000, "late": 0}).encode())
        for m in "ab"
    ]
    rows = [minute[0], all_time[0], later, *minute[1:], hour, all_time[1]]
    grouped = groups(rows)
    assert grouped == [
        (minute[0], minute[1], minute[2]),  # d1's three metrics of one window
        (all_time[0], all_time[1]),  # d1's all-time rows
        (later,),  # d1's next window: a request of its own
        (minute[3], minute[4], minute[5]),  # d2
        (hour,),  # the same device and start in the hourly table
    ]
    assert sorted(map(id, rows)) == sorted(id(row) for group in grouped for row in group)


def test_groups_are_bounded() -> None:
    rows = [to_row(topics.KAFKA_AGG_1M, _window(metric=f"m{i:02d}")) for i in range(40)]
    assert [len(group) for group in groups(rows, most=16)] == [16, 16, 8]
