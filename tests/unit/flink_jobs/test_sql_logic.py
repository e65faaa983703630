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
from flink_jobs.job import register_views
from tests.oracle import OracleReading, close_enough, expected

BASE = 1_764_000_000_000 - 1_764_000_000_000 % 3_600_000


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


@pytest.fixture(scope="module")
def t_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    pyflink_table = pytest.importorskip("pyflink.table")
    path: Path = tmp_path_factory.mktemp("flink") / "readings.json"
    path.write_text("\n".join(
        json.dumps({"deviceId": r.device_id, "tenant": "t", "ts": r.ts, "metrics": r.metrics})
        for r in _readings()
    ))
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
    minute, _, _ = expected(_readings())
    rows = _rows(t_env, sql.INSERT_1M)
    assert len(rows) == len(minute)
    for device, metric, start, end, count, total, low, high in rows:
        want = minute[(device, metric, start)]
        assert end == start + 60_000
        assert (count, low, high) == (want.count, want.min, want.max)
        assert close_enough(total, want.sum)


def test_hour_windows_cascade_from_minutes(t_env: Any) -> None:
    _, hour, _ = expected(_readings())
    rows = _rows(t_env, sql.INSERT_1H)
    assert len(rows) == len(hour) == 3 * 2 * 2
    for device, metric, start, end, count, total, low, high in rows:
        want = hour[(device, metric, start)]
        assert end == start + 3_600_000
        assert (count, low, high) == (want.count, want.min, want.max)
        assert close_enough(total, want.sum)


def test_all_time_rollup(t_env: Any) -> None:
    _, _, all_time = expected(_readings())
    final: dict[tuple[str, str], Any] = {}
    for row in _rows(t_env, sql.INSERT_ALL):
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
