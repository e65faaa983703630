"""Key figures for `iot status`, read from the services' own metrics and from Kafka."""

from __future__ import annotations

from typing import Any

import httpx

from gateway import endpoints
from gateway.prometheus_text import parse_prometheus


def scrape(port: int) -> dict[str, float]:
    """Prometheus text of a local /metrics: `name` sums a metric over its labels (counters),
    `name{labels}` keeps each series (gauges)."""
    return parse_prometheus(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2.0).text)


def consumer_lag(bootstrap: str | dict[str, Any], group: str, topic: str) -> int | None:
    """Messages of `topic` not yet committed by `group`, or None when Kafka does not answer.
    bootstrap: the address, or a whole client config (with the profile's credentials)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    client = {"bootstrap.servers": bootstrap} if isinstance(bootstrap, str) else bootstrap
    # log_level 0: a broker that is down shows in the status rows, not as librdkafka's stderr lines.
    consumer = Consumer({**client, "group.id": group, "log_level": 0,
                         "enable.auto.commit": False, "socket.timeout.ms": 3000})
    try:
        metadata = consumer.list_topics(topic, timeout=3)
        partitions = [TopicPartition(topic, p) for p in metadata.topics[topic].partitions]
        lag = 0
        for tp in consumer.committed(partitions, timeout=3):
            low, high = consumer.get_watermark_offsets(tp, timeout=3)
            lag += high - (tp.offset if tp.offset >= 0 else low)
        return lag
    except KafkaException:
        return None
    finally:
        consumer.close()


def kafka_bootstrap(port: int) -> str:
    return f"{endpoints.HOST}:{port}"
