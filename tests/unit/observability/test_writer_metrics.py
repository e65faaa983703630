"""The writer's operator metrics that need no Cassandra: late readings and replayed windows."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from prometheus_client import REGISTRY

from storage import writer
from storage.rows import Row


def _late_row(device: str, late: int) -> Row:
    ts = datetime(2026, 12, 1, tzinfo=UTC)
    return Row("agg_all", (device, "temperature"),
               (device, "temperature", 10, 1.0, 0.0, 1.0, 0.1, ts, ts, late))


def _late_total() -> float:
    return REGISTRY.get_sample_value("iot_writer_late_readings_total") or 0.0


def test_late_readings_count_the_rise_of_each_keys_late_count() -> None:
    before = _late_total()
    writer.count_late(_late_row("late-a", 3))  # first sight: the baseline, not counted
    writer.count_late(_late_row("late-a", 5))
    writer.count_late(_late_row("late-a", 5))  # the same update again (a replay)
    writer.count_late(_late_row("late-b", 1))
    writer.count_late(_late_row("late-b", 4))
    assert _late_total() - before == 2 + 3


def test_the_late_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(writer, "_LATE_KEYS", 10)
    monkeypatch.setattr(writer, "_late_seen", {})
    for i in range(50):
        writer.count_late(_late_row(f"bound-{i}", i))
    assert len(writer._late_seen) == 10


def test_applied_reads_the_lwt_answer() -> None:
    assert writer._applied(SimpleNamespace(was_applied=False)) is False
    assert writer._applied(SimpleNamespace(was_applied=True)) is True
    assert writer._applied(object()) is True
