"""The aggregates writer: Flink's output topics -> Cassandra, offsets committed after the write.

At-least-once from Kafka plus idempotent writes (upserts keyed by device, window, metric) gives
exact rows: a batch replayed after a crash writes the same values again.

Rows go to Cassandra in groups of one partition (storage/rows.py `groups`): a key's window rows
of one window (its metrics) as one conditional batch, its all-time rows as one batch of upserts.
A window row is written `IF NOT EXISTS` (the first write wins), and that condition is a Paxos
round: per row it cost Cassandra 0.6-1.1 ms of CPU against 0.1-0.3 ms for a plain write, and at
each minute's end a fleet of 1,000 devices closes 3,000 rows at once. One round per window of a
key instead of one per metric cut that burst's Cassandra CPU from 1.9 s to 0.85 s. A group of
which any row exists (a replay) is refused whole, and its rows are then written one by one
`IF NOT EXISTS`, so every row ends up exactly as with a condition of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, PreparedStatement, Statement
from confluent_kafka import Consumer, KafkaError, Message
from prometheus_client import Counter, Gauge, Histogram

from gateway.cassandra_session import connect
from gateway.retry import Backoff, RetriesExhausted
from storage.config import StorageSettings
from storage.rows import CQL, Row, dedupe, groups, to_row

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


@dataclass(frozen=True, slots=True)
class _Write:
    """One request: the rows of one partition (storage/rows.py `groups`), conditional or not."""

    rows: tuple[Row, ...]
    statement: Statement | PreparedStatement
    params: tuple[Any, ...] | None

    @property
    def conditional(self) -> bool:
        return self.rows[0].table != "agg_all"


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
        self.write_rows(self._rows(messages))

    def write_rows(self, rows: list[Row]) -> None:
        """Write rows (deduplicated, in the order read) until all are in, or raise WriterError."""
        if not rows:
            return
        writes = [self._write(group) for group in groups(rows)]
        backoff = Backoff(initial_s=0.4, max_s=30.0, max_attempts=self.settings.writer_max_retries)
        while True:
            failures, refused = self._execute(writes)
            # A refused group: some row of it exists; each row then gets its own condition.
            writes = [self._write((row,)) for write in refused for row in write.rows]
            if not failures and not writes:
                break
            if not failures:
                continue
            RETRIES.inc()
            try:
                delay = backoff.next_delay()
            except RetriesExhausted as exc:
                raise WriterError(
                    f"{len(failures)} writes still failing after {backoff.attempts + 1} attempts"
                ) from exc
            log.warning("%d of %d writes failed (%s); retry %d in %.1fs",
                        len(failures), len(failures) + len(writes), failures[0][1], backoff.attempts,
                        delay)
            writes += [write for write, _ in failures]
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

    def _write(self, rows: tuple[Row, ...]) -> _Write:
        prepared = self._prepared[rows[0].table]
        if len(rows) == 1:
            return _Write(rows, prepared, rows[0].values)
        # One partition: Cassandra applies it atomically, without the batch log.
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for row in rows:
            batch.add(prepared, row.values)
        return _Write(rows, batch, None)

    def _execute(self, writes: list[_Write]) -> tuple[list[tuple[_Write, Any]], list[_Write]]:
        """(writes that failed with their error, conditional groups refused because a row exists)."""
        results = execute_concurrent(
            self._session, [(write.statement, write.params) for write in writes],
            concurrency=self.settings.writer_concurrency, raise_on_first_error=False,
        )
        failures, refused = [], []
        for write, (ok, result) in zip(writes, results, strict=True):
            if not ok:
                failures.append((write, result))
            elif write.conditional and not _applied(result):
                if len(write.rows) > 1:
                    refused.append(write)
                else:
                    DUPLICATES.labels(write.rows[0].table).inc()
        return failures, refused


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
