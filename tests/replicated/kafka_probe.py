"""Kafka as the replicated profile's clients see it: SASL/SCRAM, every broker in the bootstrap."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from confluent_kafka import Consumer, TopicPartition

from gateway import topics
from stack import topology
from stack.config import StackSettings


def consumer(stack: StackSettings) -> Consumer:
    return Consumer({**topology.kafka_client_config(stack), "group.id": f"replicated-{uuid.uuid4().hex}",
                     "enable.auto.commit": False})


def end_offsets(stack: StackSettings, topic: str = topics.KAFKA_READINGS) -> list[TopicPartition]:
    c = consumer(stack)
    try:
        partitions = c.list_topics(topic, timeout=10).topics[topic].partitions
        return [TopicPartition(topic, p, c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
                for p in partitions]
    finally:
        c.close()


def records_since(stack: StackSettings, start: list[TopicPartition], devices: Iterable[str],
                  timeout_s: float = 60.0) -> int:
    """Records of these devices in iot.readings from the start offsets up to the current end."""
    import time

    wanted = set(devices)
    ends = {tp.partition: tp.offset for tp in end_offsets(stack)}
    c = consumer(stack)
    count = 0
    try:
        c.assign(start)
        done = {tp.partition for tp in start if tp.offset >= ends[tp.partition]}
        deadline = time.monotonic() + timeout_s
        while len(done) < len(ends) and time.monotonic() < deadline:
            for message in c.consume(10_000, timeout=1.0):
                if message.error():
                    continue
                partition, offset = message.partition() or 0, message.offset() or 0
                if offset + 1 >= ends[partition]:
                    done.add(partition)
                if offset < ends[partition] and (message.key() or b"").decode() in wanted:
                    value = json.loads(message.value() or b"{}")
                    count += value.get("deviceId") in wanted
    finally:
        c.close()
    return count
