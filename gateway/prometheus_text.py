"""Figures out of a /metrics page (the Prometheus text format), for status lines and views."""

from __future__ import annotations


def parse_prometheus(text: str) -> dict[str, float]:
    """`name` sums a metric over its labels (counters); `name{labels}` keeps each series
    (gauges), written as the page writes it."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, _, raw = line.rpartition(" ")
        try:
            value = float(raw)
        except ValueError:
            continue
        name = series.split("{", 1)[0]
        values[name] = values.get(name, 0.0) + value
        if series != name:
            values[series] = value
    return values
