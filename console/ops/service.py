"""The operator views' data, read off the event loop (worker threads) and reused briefly.

Answers are cached for `ops_cache_s` so a page reloaded by several operators costs one read of
Kafka, Cassandra or the stack's status; the blocking clients are opened on first use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from console.config import ConsoleSettings
from console.ops.cassandra_view import CassandraView, TableInfo
from console.ops.kafka_view import DeadLetter, GroupInfo, KafkaView, TopicInfo
from gateway import topics
from gateway.prometheus_text import parse_prometheus

log = logging.getLogger(__name__)

T = TypeVar("T")

FLINK_GROUP = "flink-aggregates"


@dataclass(frozen=True, slots=True)
class Component:
    name: str
    state: str
    detail: str


@dataclass(frozen=True, slots=True)
class PipelineHealth:
    components: list[Component]
    messages_in: float | None
    messages_per_s: float | None
    dlq_total: float | None
    dlq_per_s: float | None
    flink_lag: int | None
    newest_window_end: float | None

    @property
    def freshness_s(self) -> float | None:
        return None if self.newest_window_end is None else max(0.0, time.time() - self.newest_window_end)


def stack_status(command: Sequence[str], timeout_s: float = 30.0) -> list[Component]:
    """Each component as `iot status` prints it, asked of the stack runner's `iot status --json`
    in a process of its own (blocking: callers run it in a worker thread). It exits 3 when a
    component is down, with the rows still printed. Unanswered, one row says why: the rest of
    the health view (rates, lag) does not depend on it."""
    try:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=timeout_s, check=False)
        rows = json.loads(done.stdout)
        return [Component(str(r["name"]), str(r["state"]), redact(str(r["detail"]))) for r in rows]
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        log.warning("stack status unavailable from %s: %s", " ".join(command), exc)
        return [Component("stack", "unknown", f"status unavailable: {exc.__class__.__name__}")]


_PASSWORD = re.compile(r"(admin / )[^,;)\s]+")


def redact(detail: str) -> str:
    """`iot status` shows the Keycloak admin password on the terminal; a web page does not."""
    return _PASSWORD.sub(r"\1(hidden)", detail)


class Operations:
    def __init__(
        self, settings: ConsoleSettings, status: Callable[[], list[Component]] | None = None
    ) -> None:
        self._settings = settings
        self._status = status or (lambda: stack_status(settings.console_status_command))
        self._kafka: KafkaView | None = None
        self._cassandra = CassandraView(settings)
        self._kafka_lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        # (monotonic time, received, dlq) of the previous bridge scrape: rates between scrapes.
        self._last_sample: tuple[float, float, float] | None = None
        self._rates: tuple[float | None, float | None] = (None, None)

    def close(self) -> None:
        if self._kafka is not None:
            self._kafka.close()
        self._cassandra.close()

    def _kafka_view(self) -> KafkaView:
        if self._kafka is None:
            self._kafka = KafkaView(self._settings)
        return self._kafka

    def _locked_kafka(self, read: Callable[[KafkaView], T]) -> T:
        with self._kafka_lock:
            return read(self._kafka_view())

    async def _cached(self, key: str, load: Callable[[], T]) -> T:
        """One load per key at a time, in a worker thread; reused for ops_cache_s."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > time.monotonic():
                value: T = hit[1]
                return value
            value = await asyncio.to_thread(load)
            if len(self._cache) > 500:
                self._cache.clear()
            self._cache[key] = (time.monotonic() + self._settings.ops_cache_s, value)
            return value

    async def topics(self) -> tuple[list[TopicInfo], list[GroupInfo]]:
        def load() -> tuple[list[TopicInfo], list[GroupInfo]]:
            def read(view: KafkaView) -> tuple[list[TopicInfo], list[GroupInfo]]:
                listed = view.topics()
                return listed, view.groups(listed)

            return self._locked_kafka(read)

        return await self._cached("kafka", load)

    async def dead_letters(self) -> list[DeadLetter]:
        per_partition = self._settings.dlq_scan_per_partition
        return await self._cached(
            "dlq", lambda: self._locked_kafka(lambda view: view.dead_letters(topics.KAFKA_DLQ, per_partition))
        )

    async def tables(self) -> list[TableInfo]:
        return await self._cached("tables", self._cassandra.tables)

    async def device_rows(self, device_id: str) -> dict[str, list[dict[str, Any]]]:
        return await self._cached(f"rows:{device_id}", lambda: self._cassandra.device_rows(device_id))

    async def health(self, http: httpx.AsyncClient) -> PipelineHealth:
        components, lag, bridge, writer = await asyncio.gather(
            self._cached("status", self._status),
            self._cached(
                "flink-lag",
                lambda: self._locked_kafka(lambda view: view.lag(FLINK_GROUP, topics.KAFKA_READINGS)),
            ),
            _scrape(http, self._settings.bridge_metrics_url),
            _scrape(http, self._settings.writer_metrics_url),
        )
        received = bridge.get("bridge_messages_received_total") if bridge else None
        dlq = bridge.get("bridge_messages_dlq_total") if bridge else None
        if received is not None and dlq is not None:
            self._sample(received, dlq)
            if self._rates[0] is None:
                # The first view since start: a second scrape a moment later gives the rates.
                await asyncio.sleep(1.0)
                again = await _scrape(http, self._settings.bridge_metrics_url)
                if again:
                    received = again.get("bridge_messages_received_total", received)
                    dlq = again.get("bridge_messages_dlq_total", dlq)
                    self._sample(received, dlq)
        newest = writer.get('iot_writer_last_window_end_seconds{table="agg_1m"}') if writer else None
        return PipelineHealth(
            components=components,
            messages_in=received,
            messages_per_s=self._rates[0],
            dlq_total=dlq,
            dlq_per_s=self._rates[1],
            flink_lag=lag,
            newest_window_end=newest or None,
        )

    def _sample(self, received: float, dlq: float) -> None:
        now = time.monotonic()
        last = self._last_sample
        if last is None or now - last[0] >= 1.0:
            if last is not None and received >= last[1]:
                elapsed = now - last[0]
                self._rates = ((received - last[1]) / elapsed, (dlq - last[2]) / elapsed)
            self._last_sample = (now, received, dlq)


async def _scrape(http: httpx.AsyncClient, url: str) -> dict[str, float] | None:
    try:
        response = await http.get(url, timeout=2.0)
    except httpx.HTTPError:
        return None
    return parse_prometheus(response.text) if response.status_code == 200 else None
