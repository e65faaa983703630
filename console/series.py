"""Turning the query API's window items into what the pages show (no I/O here)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from console.errors import BadInput

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
# Up to this span a chart shows the 1m windows (a day is 1,440 points); longer ones the 1h.
MAX_1M_SPAN_MS = 2 * DAY_MS
# The query API keeps 1m rows about a month and 1h rows about two years.
MAX_SPAN_MS = 730 * DAY_MS


class Range(StrEnum):
    HOUR = "1h"
    DAY = "1d"
    WEEK = "1w"
    CUSTOM = "custom"


_SPANS = {Range.HOUR: HOUR_MS, Range.DAY: DAY_MS, Range.WEEK: 7 * DAY_MS}


def pick_range(range_: Range, from_ms: int | None, to_ms: int | None, now_ms: int) -> tuple[str, int, int]:
    """(window, start, end) of a chart: the 1m windows for short spans, the 1h ones beyond."""
    if range_ is Range.CUSTOM:
        if from_ms is None:
            raise BadInput("a custom range needs `from`")
        end = to_ms if to_ms is not None else now_ms
        if end <= from_ms:
            raise BadInput("`to` must be after `from`")
        if end - from_ms > MAX_SPAN_MS:
            raise BadInput("a custom range spans at most two years")
        start = from_ms
    else:
        end = now_ms
        start = now_ms - _SPANS[range_]
    window = "1m" if end - start <= MAX_1M_SPAN_MS else "1h"
    if window == "1h":
        start -= start % HOUR_MS
    return window, start, end


def epoch_ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def columns(items: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per metric: window starts (epoch seconds, uPlot's x) and avg, min, max, count columns."""
    out: dict[str, dict[str, list[float]]] = {}
    for item in items:
        start = item.get("windowStart")
        if not start:
            continue
        column = out.setdefault(item["metric"], {"t": [], "avg": [], "min": [], "max": [], "count": []})
        column["t"].append(epoch_ms(start) / 1000)
        for name in ("avg", "min", "max", "count"):
            column[name].append(item[name])
    return dict(sorted(out.items()))


def last_minute_count(items: list[dict[str, Any]]) -> int | None:
    """Readings in the newest closed 1m window: the largest count of its metrics (a reading
    carries several metrics, each counted once per reading)."""
    newest = max((item["windowStart"] for item in items if item.get("windowStart")), default=None)
    if newest is None:
        return None
    return max(int(item["count"]) for item in items if item.get("windowStart") == newest)
