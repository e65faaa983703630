"""The job's SQL on in-memory data, in a local Flink mini cluster (no services), against the oracle."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flink_jobs import sql
from flink_jobs.config import FlinkJobSettings
from flink_jobs.job import job_configuration, register_views, statements, with_state_ttl
from tests.oracle import OracleReading, close_enough, expected

BASE = 1_764_000_000_000 - 1_764_000_000_000 % 3_600_000
# Devices a and b are in one group; the group's windows are over both devices' readings.
GROUP = "group:t:g1"
MEMBERS = {"a", "b"}


def _readings() -> list[OracleReading]:
    rng = random.Random(7)
    readings = []
    for device in ("a", "b", "c"):
        for step in range(0, 2 * 3600, 7):
            ts = BASE + step * 1000 + rng.randint(0, 999)
            readings.append(OracleReading(device, ts, {"temperature": rng.uniform(15, 30),
                                                       "humidity": round(rng.uniform(30, 60), 1)}))
    # Out of order by up to 10 s, as devices deliver them; never late (the watermark trails 10 s).
    readings.sort(key=lambda r: r.ts + rng.randint(0, 10_000))
    return readings


def _keyed() -> list[OracleReading]:
    """The oracle's input: every reading under its device, and again under its group."""
    readings = _readings()
    return readings + [OracleReading(GROUP, r.ts, r.metrics) for r in readings if r.device_id in MEMBERS]


def _records() -> list[dict[str, Any]]:
    """What reaches Kafka: every reading once, some again (right after the first copy, and 600
    readings (~20 minutes of stream) later, when its window is long closed: a late copy), and
    heartbeats in between. The oracle is over the distinct readings only."""
    readings = _readings()
    placed: list[tuple[int, int, dict[str, Any]]] = []
    for i, r in enumerate(readings):
        record = {"deviceId": r.device_id, "tenant": "t", "ts": r.ts, "metrics": r.metrics,
                  "seq": r.ts // 1000, "receivedAt": r.ts}
        if r.device_id in MEMBERS:
            record["groups"] = [GROUP]
        placed.append((i, 0, record))
        if i % 7 == 0:
            placed.append((i, 1, record))
        if i % 11 == 0 and i + 600 < len(readings):
            placed.append((i + 600, 2, {**record, "receivedAt": readings[i + 600].ts}))
        if i % 50 == 0:
            placed.append((i, 3, {"ts": r.ts - 10_000, "receivedAt": r.ts - 10_000, "heartbeat": 1}))
    return [record for _, _, record in sorted(placed, key=lambda p: (p[0], p[1]))]


@pytest.fixture(scope="module")
def t_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pyflink_table = pytest.importorskip("pyflink.table")
    path: Path = tmp_path_factory.mktemp("flink") / "readings.json"
    path.write_text("\n".join(json.dumps(record) for record in _records()))
    env = pyflink_table.TableEnvironment.create(pyflink_table.EnvironmentSettings.in_streaming_mode())
    env.get_config().set("table.local-time-zone", "UTC")
    env.get_config().set("parallelism.default", "1")
    ddl = sql.source_ddl(FlinkJobSettings()).split(") WITH (")[0]
    env.execute_sql(f"{ddl}) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json')")
    register_views(env)
    yield env


def _rows(env: Any, insert: str) -> list[Any]:
    query = insert.split("\n", 2)[2]  # the SELECT of an INSERT INTO ... statement
    with env.sql_query(query).execute().collect() as results:
        return list(results)


def test_minute_windows_match_oracle(t_env: Any) -> None:
    minute, _, _ = expected(_keyed())
    rows = _rows(t_env, sql.INSERT_1M)
    assert len(rows) == len(minute)
    for device, metric, start, end, count, total, low, high in rows:
        want = minute[(device, metric, start)]
        assert end == start + 60_000
        assert (count, low, high) == (want.count, want.min, want.max)
        assert close_enough(total, want.sum)


def test_hour_windows_cascade_from_minutes(t_env: Any) -> None:
    _, hour, _ = expected(_keyed())
    rows = _rows(t_env, sql.INSERT_1H)
    assert len(rows) == len(hour) == (3 + 1) * 2 * 2  # devices and the group
    for device, metric, start, end, count, total, low, high in rows:
        want = hour[(device, metric, start)]
        assert end == start + 3_600_000
        assert (count, low, high) == (want.count, want.min, want.max)
        assert close_enough(total, want.sum)


@pytest.mark.parametrize("insert", [sql.INSERT_ALL, sql.INSERT_ALL_FROM_WINDOWS],
                         ids=["per-reading", "from-windows"])
def test_all_time_rollup(t_env: Any, insert: str) -> None:
    _, _, all_time = expected(_keyed())
    final: dict[tuple[str, str], Any] = {}
    for row in _rows(t_env, insert):
        if row.get_row_kind().name in ("INSERT", "UPDATE_AFTER"):
            final[(row[0], row[1])] = row
    assert final.keys() == all_time.keys()
    for key, row in final.items():
        want = all_time[key]
        _, _, count, total, low, high, first, last, late = row
        assert (count, low, high, first, last, late) == (
            want.count, want.min, want.max, want.first_ts, want.last_ts, 0)
        assert close_enough(total, want.sum)


def test_statements_take_their_settings() -> None:
    settings = FlinkJobSettings(watermark_delay_s=7, source_topic="t-in", kafka_bootstrap="k:1")
    source = sql.source_ddl(settings)
    assert "INTERVAL '7' SECOND" in source and "'t-in'" in source and "'k:1'" in source
    assert all("k:1" in ddl for ddl in sql.sink_ddls(settings))


def test_copies_are_removed_before_anything_counts(t_env: Any) -> None:
    """The readings above reached the source with copies (some late) and heartbeats; every
    oracle comparison in this module is over the distinct readings. Without deduplication the
    same source counts the copies."""
    records = _records()
    assert len([r for r in records if "deviceId" in r]) > len(_readings())
    plain = t_env.sql_query(
        "SELECT COUNT(*) FROM readings WHERE deviceId IS NOT NULL").execute().collect()
    with plain as results:
        assert [row[0] for row in results][-1] == len([r for r in records if "deviceId" in r])


def test_only_the_deduplication_state_expires(t_env: Any) -> None:
    t_env.execute_sql(
        "CREATE TEMPORARY TABLE IF NOT EXISTS counts (deviceId STRING, metric STRING, n BIGINT)"
        " WITH ('connector' = 'blackhole')")
    statements = t_env.create_statement_set()
    statements.add_insert_sql(
        "INSERT INTO counts SELECT deviceId, metric, COUNT(*) FROM classified GROUP BY deviceId, metric")
    plan = json.loads(with_state_ttl(statements.compile_plan().as_json_string(), "deduplicate", 7200))
    ttls = {node["type"].split("_")[0]: [s["ttl"] for s in node["state"]]
            for node in plan["nodes"] if node.get("state")}
    assert ttls == {"stream-exec-deduplicate": ["7200000 ms"],
                    "stream-exec-group-aggregate": ["0 ms"]}


def test_a_plan_without_the_node_is_refused() -> None:
    with pytest.raises(RuntimeError, match="no deduplicate state"):
        with_state_ttl(json.dumps({"nodes": [{"type": "stream-exec-calc_1"}]}), "deduplicate", 60)


def test_dedup_switch_and_horizon_shape_the_job() -> None:
    on, off = FlinkJobSettings(), FlinkJobSettings(dedup=False)
    assert "ROW_NUMBER()" in dict(sql.views(dedup=True))["distinct_readings"]
    assert "ROW_NUMBER()" not in dict(sql.views(dedup=False))["distinct_readings"]
    assert statements(on) != statements(off)
    assert statements(on) != statements(FlinkJobSettings(dedup_horizon_s=7200))
    assert statements(on) != statements(FlinkJobSettings(state_backend="rocksdb"))
    assert job_configuration(on, None)["table.exec.state.ttl"] == "0 ms"


def test_a_copy_is_the_same_device_ts_seq_and_metrics(t_env: Any, tmp_path: Path) -> None:
    """The key holds the metrics' hash, not their text: a copy still needs the same metrics, and
    a reading that differs only in its metrics is a reading of its own."""
    first = {"deviceId": "d", "tenant": "t", "ts": BASE, "seq": 1, "receivedAt": BASE,
             "metrics": {"temperature": 21.5, "humidity": 40.0}}
    records = [first, {**first, "receivedAt": BASE + 5_000},
               {**first, "metrics": {"temperature": 21.6, "humidity": 40.0}},
               {**first, "seq": 2}, {**first, "ts": BASE + 1}]
    path = tmp_path / "copies.json"
    path.write_text("\n".join(json.dumps(record) for record in records))
    ddl = sql.source_ddl(FlinkJobSettings(), table="copies").split(") WITH (")[0]
    t_env.execute_sql(f"{ddl}) WITH ('connector' = 'filesystem', 'path' = '{path}', 'format' = 'json')")
    distinct = dict(sql.views("copies", dedup=True, groups=False))["distinct_readings"]
    assert sql.DEDUP_METRICS_KEY in distinct
    query = f"SELECT ts, metrics['temperature'] FROM ({distinct})"
    with t_env.sql_query(query).execute().collect() as results:
        rows = list(results)
    assert sorted((row[0], row[1]) for row in rows) == [
        (BASE, 21.5), (BASE, 21.5), (BASE, 21.6), (BASE + 1, 21.5)]
