"""What a deduplication step can cost in PyFlink, outside the pipeline: the same generated
readings through Flink's SQL alone, through SQL with the job's kind of deduplication, and through
a Python DataStream deduplication keyed by device, each on a local mini-cluster at parallelism 2;
and the planner's answer to whether a keyed step can share its exchange with the next one.

Why it is measured: the job's deduplication runs at about 0.6 of the job without it
(bench/flink.py), and the two ways PyFlink offers to do better are the planner (if it reused the
deduplication's partitioning for the windows, the step would cost no second exchange) and Python
functions (keyed state of our own, on the device's partitioning). Both are answered here with
figures: the planner puts an exchange before every keyed step even when two steps share their key,
and a Python keyed function is two orders of magnitude slower than SQL.

`python -m bench dedup_options` (part of `make bench`); no stack service is needed.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

log = logging.getLogger("bench.dedup_options")

SQL_ROWS = int(os.environ.get("IOT_BENCH_DEDUP_SQL_ROWS", "3000000"))
PYTHON_ROWS = int(os.environ.get("IOT_BENCH_DEDUP_PYTHON_ROWS", "100000"))
PARALLELISM = 2

_SOURCE = """CREATE TEMPORARY TABLE r (deviceId STRING, ts BIGINT, seq BIGINT, v DOUBLE) WITH (
  'connector' = 'datagen', 'rows-per-second' = '100000000', 'number-of-rows' = '{rows}',
  'fields.deviceId.length' = '8', 'fields.ts.kind' = 'sequence', 'fields.ts.start' = '1',
  'fields.ts.end' = '{rows}', 'fields.seq.min' = '1', 'fields.seq.max' = '1000000')"""
_SINK = ("CREATE TEMPORARY TABLE s (deviceId STRING, ts BIGINT, seq BIGINT, v DOUBLE)"
         " WITH ('connector' = 'blackhole')")
_DEDUP = """INSERT INTO s SELECT deviceId, ts, seq, v FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY deviceId, ts, seq ORDER BY arrival) AS copy_no
  FROM (SELECT *, PROCTIME() AS arrival FROM r)) WHERE copy_no = 1"""
# Two keyed steps on the same key: a deduplication by (deviceId, metric), then a grouping by it.
_SAME_KEY = """INSERT INTO s2 SELECT deviceId, metric, COUNT(*) FROM (
  SELECT deviceId, metric FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY deviceId, metric ORDER BY arrival)
  AS copy_no FROM (SELECT deviceId, CAST(seq AS STRING) AS metric, PROCTIME() AS arrival FROM r))
  WHERE copy_no = 1) GROUP BY deviceId, metric"""


def _environment(rows: int) -> tuple[Any, Any]:
    from pyflink.common import Configuration
    from pyflink.datastream import StreamExecutionEnvironment
    from pyflink.table import StreamTableEnvironment

    config = Configuration()
    config.set_string("parallelism.default", str(PARALLELISM))
    config.set_string("python.execution-mode", "process")
    env = StreamExecutionEnvironment.get_execution_environment(config)
    tables = StreamTableEnvironment.create(env)
    tables.execute_sql(_SOURCE.format(rows=rows))
    tables.execute_sql(_SINK)
    return env, tables


def _timed(rows: int, run: Any) -> dict[str, Any]:
    started = time.perf_counter()
    run()
    elapsed = time.perf_counter() - started
    return {"rows": rows, "seconds": round(elapsed, 1), "rows_per_s": round(rows / elapsed)}


def _python_dedup(rows: int) -> dict[str, Any]:
    from pyflink.common import Types
    from pyflink.datastream import KeyedProcessFunction, RuntimeContext
    from pyflink.datastream.state import MapStateDescriptor

    class FirstCopies(KeyedProcessFunction):  # type: ignore[misc]
        """Keyed by device: a map of the reading ids seen (what a bit set per device would hold)."""

        def open(self, context: RuntimeContext) -> None:
            self.seen = context.get_map_state(MapStateDescriptor("seen", Types.LONG(), Types.BOOLEAN()))

        def process_element(self, row: Any, ctx: Any) -> Any:
            reading = row[1] * 1_000_003 + row[2]
            if not self.seen.contains(reading):
                self.seen.put(reading, True)
                yield row

    _, tables = _environment(rows)
    names = ["deviceId", "ts", "seq", "v"]
    kinds = [Types.STRING(), Types.LONG(), Types.LONG(), Types.DOUBLE()]
    stream = tables.to_data_stream(tables.from_path("r"))
    kept = stream.key_by(lambda r: r[0], key_type=Types.STRING()).process(
        FirstCopies(), output_type=Types.ROW_NAMED(names, kinds)
    )
    return _timed(rows, lambda: tables.from_data_stream(kept).execute_insert("s").wait())


def run() -> dict[str, Any]:
    figures: dict[str, Any] = {"parallelism": PARALLELISM, "load_average_at_start": list(os.getloadavg())}
    _, tables = _environment(SQL_ROWS)
    tables.execute_sql("CREATE TEMPORARY TABLE s2 (deviceId STRING, metric STRING, n BIGINT) "
                       "WITH ('connector' = 'blackhole')")
    plan = tables.explain_sql(_SAME_KEY).split("== Optimized Execution Plan ==")[-1]
    figures["exchanges_for_two_steps_on_one_key"] = plan.count("Exchange(")
    figures["sql_only"] = _timed(SQL_ROWS, lambda: tables.execute_sql("INSERT INTO s SELECT * FROM r").wait())
    _, tables = _environment(SQL_ROWS)
    figures["sql_dedup"] = _timed(SQL_ROWS, lambda: tables.execute_sql(_DEDUP).wait())
    figures["python_datastream_dedup"] = _python_dedup(PYTHON_ROWS)
    base = figures["sql_only"]["rows_per_s"]
    figures["sql_dedup_vs_sql_only"] = round(figures["sql_dedup"]["rows_per_s"] / base, 3)
    figures["python_dedup_vs_sql_dedup"] = round(
        figures["python_datastream_dedup"]["rows_per_s"] / figures["sql_dedup"]["rows_per_s"], 4
    )
    figures["load_average_at_end"] = list(os.getloadavg())
    log.info("dedup options: %s", figures)
    return figures


if __name__ == "__main__":
    import json

    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(), indent=2))
