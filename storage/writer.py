"""The aggregates writer: Flink's output topics -> Cassandra, offsets committed after the write.

At-least-once from Kafka plus idempotent writes (upserts keyed by device, window, metric) gives
exact rows: a batch replayed after a crash writes the same values again.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from cassandra.concurrent import execute_concurrent
from cassandra.query import PreparedStatement
from confluent_kafka import Consumer, KafkaError, Message
from prometheus_client import Counter, Gauge, Histogram

from gateway.cassandra_session import connect
from gateway.retry import Backoff, RetriesExhausted
from storage.config import StorageSettings
from storage.rows import CQL, Row, dedupe, to_row

log = logging.getLogger(__name__)

ROWS = Counter("iot_writer_rows_total", "Rows written to Cassandra", ["table"])
SKIPPED = Counter("iot_writer_skipped_total", "Aggregate records that did not parse", ["topic"])
RETRIES = Counter("iot_writer_retries_total", "Batches retried after a Cassandra error")
LAST_WINDOW = Gauge("iot_writer_last_window_end_seconds", "End of the newest window written", ["table"])
_newest: dict[str, float] = {}
FRESHNESS = Histogram(
    "iot_writer_window_freshness_seconds", "From a window's end to its row written in Cassandra",
    ["table"], buckets=(1, 2, 5, 10, 12, 15, 20, 30, 60, 120, 300, 3600),
)
LAST_WRITE = Gauge("iot_writer_last_write_seconds", "Wall time of the last successful batch")
DUPLICATES = Counter(
    "iot_writer_duplicate_windows_total",
    "Window rows Cassandra already held (IF NOT EXISTS refused them: a replay), by table", ["table"],
)
LATE = Counter(
    "iot_writer_late_readings_total",
    "Readings that missed their windows: the rise of each all-time row's late count since this "
    "writer last saw its key",
)
# Last late count per (device, metric) of the all-time rows; bounded (the oldest key is dropped).
_LATE_KEYS = 100_000
_late_seen: dict[tuple[Any, ...], int] = {}


class WriterError(RuntimeError):
    """The writer cannot go on (Cassandra kept failing past the retry limit)."""


class AggregatesWriter:
    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self._stop = threading.Event()
        self._consumer = Consumer(
            settings.kafka_client_config({
                "group.id": settings.writer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "reconnect.backoff.ms": 500,
                "reconnect.backoff.max.ms": 10_000,
                # librdkafka's own lines go through logging instead of raw stderr.
                "logger": logging.getLogger("storage.kafka"),
            })
        )
        self._session = connect(settings, keyspace=settings.cassandra_keyspace)
        self._cluster = self._session.cluster
        self._prepared: dict[str, PreparedStatement] = {
            table: self._session.prepare(cql) for table, cql in CQL.items()
        }

    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        """Consume, write and commit until stop(); then commit what was written and close."""
        topics = [t.strip() for t in self.settings.writer_topics.split(",") if t.strip()]
        self._consumer.subscribe(topics)
        log.info("writer consuming %s", ",".join(topics))
        try:
            while not self._stop.is_set():
                messages = self._consumer.consume(self.settings.writer_batch_size, timeout=0.5)
                if messages:
                    self._write_batch(messages)
                    self._consumer.commit(asynchronous=False)
        finally:
            self._consumer.close()
            self._cluster.shutdown()
            log.info("writer stopped")

    def _rows(self, messages: list[Message]) -> list[Row]:
        rows = []
        for message in messages:
            error = message.error()
            if error is not None:
                if error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consume error: %s", error)
                continue
            value = message.value()
            if value is None:  # a tombstone of the compacted all-time topic
                continue
            try:
                rows.append(to_row(message.topic() or "", value))
            except (ValueError, KeyError, TypeError) as exc:
                SKIPPED.labels(message.topic()).inc()
                log.error(
                    "skipping unparsable aggregate topic=%s partition=%s offset=%s: %s",
                    message.topic(), message.partition(), message.offset(), exc,
                )
        return dedupe(rows)

    def _write_batch(self, messages: list[Message]) -> None:
        rows = self._rows(messages)
        if not rows:
            return
        backoff = Backoff(initial_s=0.4, max_s=30.0, max_attempts=self.settings.writer_max_retries)
        while True:
            failures = self._execute(rows)
            if not failures:
                break
            RETRIES.inc()
            try:
                delay = backoff.next_delay()
            except RetriesExhausted as exc:
                raise WriterError(
                    f"{len(failures)} rows still failing after {backoff.attempts + 1} attempts"
                ) from exc
            log.warning("%d of %d rows failed (%s); retry %d in %.1fs",
                        len(failures), len(rows), failures[0][1], backoff.attempts, delay)
            rows = [row for row, _ in failures]
            if self._stop.wait(delay):
                raise WriterError("stopped while retrying; offsets not committed")
        now = time.time()
        LAST_WRITE.set(now)
        for row in rows:
            ROWS.labels(row.table).inc()
            if row.table == "agg_all":
                count_late(row)
            else:
                window_end = row.values[4].timestamp()
                if window_end > _newest.get(row.table, 0.0):
                    _newest[row.table] = window_end
                    LAST_WINDOW.labels(row.table).set(window_end)
                FRESHNESS.labels(row.table).observe(max(0.0, now - window_end))

    def _execute(self, rows: list[Row]) -> list[tuple[Row, Any]]:
        statements = [(self._prepared[row.table], row.values) for row in rows]
        results = execute_concurrent(
            self._session, statements, concurrency=self.settings.writer_concurrency,
            raise_on_first_error=False,
        )
        failures = []
        for row, (ok, result) in zip(rows, results, strict=True):
            if not ok:
                failures.append((row, result))
            elif row.table != "agg_all" and not _applied(result):
                DUPLICATES.labels(row.table).inc()
        return failures


def _applied(result: Any) -> bool:
    """[applied] of an IF NOT EXISTS insert; True when the driver cannot tell."""
    try:
        return bool(result.was_applied)
    except (AttributeError, RuntimeError, IndexError, KeyError):
        return True


def count_late(row: Row) -> None:
    """Add the rise of an all-time row's late count to LATE (a key first seen sets the baseline)."""
    late = int(row.values[-1])
    previous = _late_seen.pop(row.key, None)
    if previous is not None and late > previous:
        LATE.inc(late - previous)
    _late_seen[row.key] = late
    if len(_late_seen) > _LATE_KEYS:
        del _late_seen[next(iter(_late_seen))]
