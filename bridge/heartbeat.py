"""Watermark heartbeats: while the fleet is silent, the aggregation's windows still close.

Flink's watermark moves only with records, partition by partition. When every device goes quiet,
no record arrives, every partition turns idle and the last windows stay open until traffic
resumes. So, about once a second while the bridge is quiet, a heartbeat record goes to every
partition of the readings topic: JSON `{"heartbeat": true, "ts": T, "receivedAt": T}` with T the
bridge's own clock (epoch ms), no deviceId and no metrics, and a header `iot-heartbeat: 1`. The
job's watermark (least of ts and receivedAt, minus its delay) then follows the bridge's clock;
the job counts nothing from a heartbeat. Consumers of the topic skip them with `is_heartbeat`.

A heartbeat at T says "nothing older than T is still coming from this bridge". That holds only
when everything the bridge received before T is already in Kafka, so a beat is sent only when
the wiring's `may_beat` says so (connected to MQTT, nothing unconfirmed in flight) and the
`activity` counter (messages received) did not move during the last interval: under traffic the
readings move the watermark themselves, and a backlog being drained after a reconnect is never
overtaken by a heartbeat. Heartbeats are disposable: one that cannot be delivered quickly is
dropped (a later one carries a newer clock), and none is ever retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from gateway.settings import KafkaConfig, KafkaConnection

log = logging.getLogger(__name__)

HEADER = "iot-heartbeat"
_HEADERS = [(HEADER, b"1")]
_FAILURE_LOG_EVERY_S = 60.0


class HeartbeatProducer(Protocol):
    """What is used of confluent_kafka.Producer."""

    def produce(self, topic: str, value: bytes, key: bytes | None = None, *args: Any,
                **kwargs: Any) -> None: ...

    def poll(self, timeout: float = ...) -> int: ...

    def flush(self, timeout: float = ...) -> int: ...


def producer_config(kafka: KafkaConnection, interval_s: float) -> KafkaConfig:
    """A producer of its own for heartbeats (the readings' producer confirms to MQTT; a heartbeat
    has nobody to confirm to): unbatched, and giving up on a heartbeat after a few intervals."""
    return kafka.kafka_client_config({
        "client.id": "bridge-heartbeat",
        "linger.ms": 0,
        "acks": 1,
        "message.timeout.ms": max(1000, int(interval_s * 3000)),
        "queue.buffering.max.messages": 10_000,
    })


def heartbeat_value(ts_ms: int) -> bytes:
    return json.dumps({"heartbeat": True, "ts": ts_ms, "receivedAt": ts_ms}).encode()


def is_heartbeat(
    headers: Sequence[tuple[str, bytes | str | None]] | None, value: bytes | None = None
) -> bool:
    """True for a heartbeat record, by its header or, for a reader without headers, its value."""
    if headers and any(name == HEADER for name, _ in headers):
        return True
    return value is not None and value.startswith(b'{"heartbeat": true')


def topic_partitions(producer: Any, topic: str, timeout_s: float = 10.0) -> list[int]:
    """The topic's partitions from the cluster's metadata (blocking: call it in a thread)."""
    metadata = producer.list_topics(topic, timeout=timeout_s).topics[topic]
    if metadata.error is not None:
        raise RuntimeError(f"no metadata for topic {topic}: {metadata.error}")
    return sorted(metadata.partitions)


class Heartbeat:
    """Sends heartbeats to every partition of `topic` every `interval_s` while the bridge is quiet."""

    def __init__(
        self,
        producer: HeartbeatProducer,
        topic: str,
        partitions: Sequence[int],
        interval_s: float,
        *,
        may_beat: Callable[[], bool] = lambda: True,
        activity: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("the heartbeat interval must be positive")
        if not partitions:
            raise ValueError(f"topic {topic} has no partitions to send heartbeats to")
        self._producer = producer
        self._topic = topic
        self._partitions = list(partitions)
        self._interval_s = interval_s
        self._may_beat = may_beat
        self._activity = activity
        self._clock = clock
        self.sent = 0  # heartbeat records handed to the producer
        self.delivered = 0
        self.failed = 0
        self.last_ts_ms: int | None = None
        self._failure_logged_at = float("-inf")

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            self.delivered += 1
            return
        self.failed += 1
        now = time.monotonic()
        if now - self._failure_logged_at >= _FAILURE_LOG_EVERY_S:
            self._failure_logged_at = now
            log.warning("heartbeat to %s partition %s not delivered: %s (%d failed so far)",
                        self._topic, msg.partition() if msg is not None else "?", err, self.failed)

    def beat(self) -> int:
        """One heartbeat to every partition, now; returns how many records were handed over."""
        ts_ms = int(self._clock() * 1000)
        value = heartbeat_value(ts_ms)
        handed = 0
        for partition in self._partitions:
            try:
                self._producer.produce(self._topic, value, None, partition=partition,
                                       headers=_HEADERS, on_delivery=self._on_delivery)
            except BufferError:
                # The producer's queue is full (Kafka unreachable): this beat is worthless later.
                self.failed += 1
                continue
            handed += 1
        self.sent += handed
        self.last_ts_ms = ts_ms
        self._producer.poll(0)
        return handed

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` is set; then hands what is queued to Kafka for at most one interval."""
        log.info("heartbeats to %s partitions %s every %.1fs while quiet", self._topic,
                 self._partitions, self._interval_s)
        seen = self._activity() if self._activity is not None else None
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self._interval_s)
                if stop.is_set():
                    break
                now = self._activity() if self._activity is not None else None
                quiet, seen = now == seen, now
                if quiet and self._may_beat():
                    self.beat()
                else:
                    self._producer.poll(0)  # serve earlier beats' delivery reports
        finally:
            left = await asyncio.to_thread(self._producer.flush, self._interval_s)
            log.info("heartbeats stopped: %d sent, %d delivered, %d failed, %d left unsent",
                     self.sent, self.delivered, self.failed, left)


async def run_heartbeats(
    producer: HeartbeatProducer,
    topic: str,
    partitions: Sequence[int],
    interval_s: float,
    stop: asyncio.Event,
    **options: Any,
) -> Heartbeat:
    """Convenience: build a Heartbeat, run it until `stop`, return it (with its figures)."""
    heartbeat = Heartbeat(producer, topic, partitions, interval_s, **options)
    await heartbeat.run(stop)
    return heartbeat
