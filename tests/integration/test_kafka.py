"""Kafka through the stack runner: topics of the pipeline, and a produce/consume round trip."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import (  # type: ignore[attr-defined,unused-ignore]  # no __all__ in some releases
    AdminClient,
    ConfigResource,
    ResourceType,
)
from confluent_kafka.cimpl import NewTopic

from gateway import endpoints, topics
from stack.config import StackSettings

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="session")
def kafka_bootstrap(services: Services) -> Iterator[str]:
    with services({"kafka"}) as settings:
        yield f"{endpoints.HOST}:{settings.kafka_port}"


@pytest.fixture
def fresh_topic(kafka_bootstrap: str) -> Iterator[str]:
    """A topic no other test uses, deleted afterwards."""
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    name = f"test.roundtrip.{uuid.uuid4().hex}"
    admin.create_topics([NewTopic(name, num_partitions=2, replication_factor=1)])[name].result(30)
    yield name
    admin.delete_topics([name])[name].result(30)


def test_pipeline_topics_exist(kafka_bootstrap: str) -> None:
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    metadata = admin.list_topics(timeout=10)
    for name in (topics.KAFKA_READINGS, topics.KAFKA_DLQ, topics.KAFKA_AGG_1M,
                 topics.KAFKA_AGG_1H, topics.KAFKA_AGG_ALL):
        assert name in metadata.topics, name
    assert len(metadata.topics[topics.KAFKA_READINGS].partitions) == (
        topics.KAFKA_READINGS_PARTITIONS
    )
    resource = ConfigResource(ResourceType.TOPIC, topics.KAFKA_AGG_ALL)
    config = admin.describe_configs([resource])[resource].result(10)
    assert config["cleanup.policy"].value == "compact"


def test_produce_consume_round_trip(kafka_bootstrap: str, fresh_topic: str) -> None:
    sent = {f"device-{i}": f'{{"n": {i}}}'.encode() for i in range(20)}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    for key, value in sent.items():
        producer.produce(fresh_topic, key=key.encode(), value=value, headers={"h": key.encode()})
    assert producer.flush(30) == 0

    consumer = Consumer({
        "bootstrap.servers": kafka_bootstrap,
        "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    received: dict[str, bytes] = {}
    try:
        consumer.subscribe([fresh_topic])
        deadline = time.monotonic() + 30
        while len(received) < len(sent) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            key = (message.key() or b"").decode()
            assert dict(message.headers() or []) == {"h": key.encode()}
            received[key] = message.value() or b""
    finally:
        consumer.close()
    assert received == sent
