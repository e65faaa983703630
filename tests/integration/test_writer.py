"""The aggregates writer against a real Cassandra: a key's window rows go in as one conditional
batch, the first write of every row wins whatever a replay brings (also when only some rows of a
window exist), and all-time rows are upserts."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest
from cassandra.cluster import Session
from prometheus_client import REGISTRY

from gateway import topics
from storage.config import StorageSettings
from storage.rows import Row, to_row
from storage.writer import AggregatesWriter
from tests.integration.cassandra_harness import Services, migrated_cql

pytestmark = pytest.mark.integration

START = 1_764_000_000_000


@pytest.fixture(scope="module")
def cql(services: Services) -> Iterator[Session]:
    with migrated_cql(services, set()) as session:
        yield session


@pytest.fixture(scope="module")
def writer(cql: Session) -> Iterator[AggregatesWriter]:
    writer = AggregatesWriter(StorageSettings())
    try:
        yield writer
    finally:
        writer._cluster.shutdown()


def _window(device: str, metric: str, count: int, start: int = START) -> Row:
    body = {"deviceId": device, "metric": metric, "windowStart": start, "windowEnd": start + 60_000,
            "count": count, "sum": float(count), "min": 1.0, "max": 1.0}
    return to_row(topics.KAFKA_AGG_1M, json.dumps(body).encode())


def _all_time(device: str, metric: str, count: int) -> Row:
    body = {"deviceId": device, "metric": metric, "count": count, "sum": float(count), "min": 1.0,
            "max": 1.0, "firstTs": START, "lastTs": START, "late": 0}
    return to_row(topics.KAFKA_AGG_ALL, json.dumps(body).encode())


def _counts(cql: Session, device: str) -> dict[tuple[int, str], int]:
    rows = cql.execute(
        "SELECT window_start, metric, count FROM iot.agg_1m WHERE device_id = %s AND bucket_month = %s",
        (device, "2025-11"),
    )
    return {(int(r.window_start.timestamp() * 1000), r.metric): r.count for r in rows}


def _refused() -> float:
    return REGISTRY.get_sample_value("iot_writer_duplicate_windows_total", {"table": "agg_1m"}) or 0.0


def _device() -> str:
    return f"writer-{uuid.uuid4().hex[:10]}"


def test_a_new_window_goes_in_whole(writer: AggregatesWriter, cql: Session) -> None:
    device = _device()
    before = _refused()
    writer.write_rows([_window(device, m, 4) for m in ("a", "b", "c")])
    assert _counts(cql, device) == {(START, "a"): 4, (START, "b"): 4, (START, "c"): 4}
    assert _refused() == before


def test_a_replayed_window_keeps_its_first_rows(writer: AggregatesWriter, cql: Session) -> None:
    device = _device()
    writer.write_rows([_window(device, m, 4) for m in ("a", "b", "c")])
    before = _refused()
    # A re-opened window with only a replayed reading in it, and the next window, in one batch.
    writer.write_rows([*(_window(device, m, 1) for m in ("a", "b", "c")),
                       *(_window(device, m, 2, START + 60_000) for m in ("a", "b", "c"))])
    counts = _counts(cql, device)
    assert [counts[(START, m)] for m in "abc"] == [4, 4, 4]
    assert [counts[(START + 60_000, m)] for m in "abc"] == [2, 2, 2]
    assert _refused() - before == 3


def test_rows_missing_from_a_partly_written_window_still_go_in(
    writer: AggregatesWriter, cql: Session
) -> None:
    device = _device()
    writer.write_rows([_window(device, "a", 4)])
    before = _refused()
    # The batch that wrote `a` was the last one before a crash; the replay brings `a` again with
    # `b` and `c`, which Cassandra has never seen: the group is refused, each row then decides.
    writer.write_rows([_window(device, "a", 1), _window(device, "b", 4), _window(device, "c", 4)])
    assert _counts(cql, device) == {(START, "a"): 4, (START, "b"): 4, (START, "c"): 4}
    assert _refused() - before == 1


def test_all_time_rows_are_upserts(writer: AggregatesWriter, cql: Session) -> None:
    device = _device()
    writer.write_rows([_all_time(device, m, 1) for m in ("a", "b")])
    writer.write_rows([_all_time(device, m, 7) for m in ("a", "b")])
    rows = cql.execute("SELECT metric, count FROM iot.agg_all WHERE device_id = %s", (device,))
    assert {r.metric: r.count for r in rows} == {"a": 7, "b": 7}
