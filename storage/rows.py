"""Flink's aggregate records (JSON on the iot.aggregates.* topics) as Cassandra rows.

Pure functions: no I/O, unit-tested. A record that does not parse raises ValueError with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway import topics


def _utc(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def bucket_month(window_start_ms: int) -> str:
    return _utc(window_start_ms).strftime("%Y-%m")


def bucket_year(window_start_ms: int) -> int:
    return _utc(window_start_ms).year


@dataclass(frozen=True, slots=True)
class Row:
    table: str
    key: tuple[Any, ...]  # identifies the row: the last write of a key in a batch wins
    values: tuple[Any, ...]


def _number(body: dict[str, Any], field: str) -> float:
    value = body[field]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{field} is not a number")
    return float(value)


def to_row(topic: str, value: bytes) -> Row:
    body = json.loads(value)
    if not isinstance(body, dict):
        raise ValueError("aggregate is not a JSON object")
    device, metric = str(body["deviceId"]), str(body["metric"])
    count = int(body["count"])
    total, low, high = _number(body, "sum"), _number(body, "min"), _number(body, "max")
    avg = total / count if count else 0.0
    if topic == topics.KAFKA_AGG_ALL:
        return Row(
            "agg_all",
            (device, metric),
            (device, metric, count, total, low, high, avg,
             _utc(int(body["firstTs"])), _utc(int(body["lastTs"])), int(body["late"])),
        )
    start, end = int(body["windowStart"]), int(body["windowEnd"])
    if topic == topics.KAFKA_AGG_1M:
        table, bucket = "agg_1m", bucket_month(start)
    elif topic == topics.KAFKA_AGG_1H:
        table, bucket = "agg_1h", bucket_year(start)  # type: ignore[assignment]
    else:
        raise ValueError(f"unknown aggregates topic {topic}")
    return Row(
        table,
        (device, metric, start),
        (device, bucket, _utc(start), metric, _utc(end), count, total, low, high, avg),
    )


# Window rows: the first write wins. A window is final when Flink emits it; after a restore from a
# checkpoint the watermark starts over, and a replayed reading that had been late could re-open its
# window with only itself in it. `IF NOT EXISTS` keeps the complete row.
CQL: dict[str, str] = {
    "agg_1m": (
        "INSERT INTO agg_1m (device_id, bucket_month, window_start, metric, window_end, count, sum,"
        " min, max, avg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
    ),
    "agg_1h": (
        "INSERT INTO agg_1h (device_id, bucket_year, window_start, metric, window_end, count, sum,"
        " min, max, avg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) IF NOT EXISTS"
    ),
    "agg_all": (
        "INSERT INTO agg_all (device_id, metric, count, sum, min, max, avg, first_ts, last_ts, late)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    ),
}


# Rows in one request at most: Cassandra warns of batches above 5 KiB (rows are ~100-200 bytes).
GROUP_ROWS = 16


def groups(rows: list[Row], most: int = GROUP_ROWS) -> list[tuple[Row, ...]]:
    """The rows as requests of one partition each, in the order first seen, at most `most` rows
    each: a key's all-time rows together (partition: device_id), a key's window rows of one window
    together (partition: device_id and bucket; written or refused as one, storage/writer.py)."""
    grouped: dict[tuple[Any, ...], list[Row]] = {}
    for row in rows:
        if row.table == "agg_all":
            slot: tuple[Any, ...] = (row.table, row.values[0])
        else:
            slot = (row.table, row.values[0], row.values[1], row.values[2])
        grouped.setdefault(slot, []).append(row)
    return [tuple(group[i : i + most]) for group in grouped.values() for i in range(0, len(group), most)]


def dedupe(rows: list[Row]) -> list[Row]:
    """One row per key: the last all-time update (Kafka keeps a key's updates in order), the first
    window row (as IF NOT EXISTS would)."""
    kept: dict[tuple[str, tuple[Any, ...]], Row] = {}
    for row in rows:
        slot = (row.table, row.key)
        if row.table == "agg_all":
            kept.pop(slot, None)
            kept[slot] = row
        elif slot not in kept:
            kept[slot] = row
    return list(kept.values())
