"""Kafka for the operator views: topics with end offsets, consumer groups with lag, dead letters.

confluent-kafka blocks, so callers run these in a worker thread (Operations does).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from console.errors import Upstream
from console.ops import TIMEOUT_S
from gateway.settings import KafkaConnection

PREVIEW_BYTES = 240


@dataclass(frozen=True, slots=True)
class TopicInfo:
    name: str
    partitions: int
    end_offsets: list[int]
    start_offsets: list[int]

    @property
    def messages(self) -> int:
        return sum(end - start for start, end in zip(self.start_offsets, self.end_offsets, strict=True))


@dataclass(slots=True)
class GroupInfo:
    group: str
    state: str
    lag: dict[str, int] = field(default_factory=dict)

    @property
    def total_lag(self) -> int:
        return sum(self.lag.values())


@dataclass(frozen=True, slots=True)
class DeadLetter:
    partition: int
    offset: int
    device: str | None
    reason: str
    mqtt_topic: str | None
    received_at: str | None
    timestamp_ms: int
    size: int
    preview: str


def _consumer(kafka: KafkaConnection, group: str) -> Consumer:
    return Consumer(
        kafka.kafka_client_config({
            "group.id": group,
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "socket.timeout.ms": 5000,
            "session.timeout.ms": 10000,
        })
    )


class KafkaView:
    def __init__(self, kafka: KafkaConnection) -> None:
        self._kafka = kafka
        self._admin = AdminClient(kafka.kafka_client_config({"socket.timeout.ms": 5000}))
        # Watermarks only: this consumer never subscribes or commits.
        self._offsets = _consumer(kafka, "iot-console-offsets")

    def close(self) -> None:
        self._offsets.close()

    def topics(self) -> list[TopicInfo]:
        try:
            metadata = self._admin.list_topics(timeout=TIMEOUT_S)
            out = []
            for name in sorted(metadata.topics):
                if name.startswith("__"):
                    continue
                partitions = sorted(metadata.topics[name].partitions)
                marks = [
                    self._offsets.get_watermark_offsets(TopicPartition(name, p), timeout=TIMEOUT_S)
                    for p in partitions
                ]
                out.append(TopicInfo(name, len(partitions), [m[1] for m in marks], [m[0] for m in marks]))
            return out
        except KafkaException as exc:
            raise Upstream(f"Kafka at {self._kafka.kafka_bootstrap}: {exc}") from exc

    def groups(self, topics: list[TopicInfo]) -> list[GroupInfo]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        ends = {(t.name, p): end for t in topics for p, end in enumerate(t.end_offsets)}
        starts = {(t.name, p): start for t in topics for p, start in enumerate(t.start_offsets)}
        try:
            listed = self._admin.list_consumer_groups(request_timeout=TIMEOUT_S).result()
            out: list[GroupInfo] = []
            for listing in sorted(listed.valid, key=lambda g: g.group_id):
                if listing.group_id.startswith("iot-console-"):
                    continue
                info = GroupInfo(listing.group_id, str(getattr(listing.state, "name", listing.state)))
                futures = self._admin.list_consumer_group_offsets(
                    [ConsumerGroupTopicPartitions(listing.group_id)], request_timeout=TIMEOUT_S
                )
                for future in futures.values():
                    for tp in future.result().topic_partitions or []:
                        end = ends.get((tp.topic, tp.partition))
                        if end is None:
                            continue
                        committed = tp.offset if tp.offset >= 0 else starts.get((tp.topic, tp.partition), 0)
                        info.lag[tp.topic] = info.lag.get(tp.topic, 0) + max(0, end - committed)
                out.append(info)
            return out
        except KafkaException as exc:
            raise Upstream(f"Kafka at {self._kafka.kafka_bootstrap}: {exc}") from exc

    def lag(self, group: str, topic: str) -> int | None:
        try:
            topic_info = next((t for t in self.topics() if t.name == topic), None)
            if topic_info is None:
                return None
            return next((g.lag.get(topic, 0) for g in self.groups([topic_info]) if g.group == group), None)
        except Upstream:
            return None

    def dead_letters(self, topic: str, per_partition: int) -> list[DeadLetter]:
        """The newest `per_partition` records of each partition of the dead-letter topic."""
        consumer = _consumer(self._kafka, "iot-console-dlq")
        try:
            metadata = consumer.list_topics(topic, timeout=TIMEOUT_S)
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                return []
            assignment, remaining = [], set()
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT_S)
                if high > low:
                    assignment.append(TopicPartition(topic, p, max(low, high - per_partition)))
                    remaining.add(p)
            if not assignment:
                return []
            consumer.assign(assignment)
            letters: list[DeadLetter] = []
            deadline = time.monotonic() + TIMEOUT_S
            while remaining and time.monotonic() < deadline:
                for message in consumer.consume(500, timeout=0.5):
                    error = message.error()
                    if error is not None:
                        if error.code() == -191:  # _PARTITION_EOF: this partition is read to its end
                            remaining.discard(message.partition())
                        continue
                    letters.append(_letter(message))
            letters.sort(key=lambda letter: (letter.timestamp_ms, letter.offset), reverse=True)
            return letters
        except KafkaException as exc:
            raise Upstream(f"Kafka at {self._kafka.kafka_bootstrap}: {exc}") from exc
        finally:
            consumer.close()


def _letter(message: Any) -> DeadLetter:
    headers = {name: (value or b"").decode("utf-8", "replace") for name, value in (message.headers() or [])}
    value: bytes = message.value() or b""
    key: bytes | None = message.key()
    _, timestamp = message.timestamp()
    return DeadLetter(
        partition=message.partition(),
        offset=message.offset(),
        device=key.decode("utf-8", "replace") if key else None,
        reason=headers.get("reason", "(no reason header)"),
        mqtt_topic=headers.get("mqtt_topic"),
        received_at=headers.get("received_at"),
        timestamp_ms=timestamp,
        size=len(value),
        preview=value[:PREVIEW_BYTES].decode("utf-8", "replace"),
    )
