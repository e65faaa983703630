"""KafkaSink with a fake librdkafka producer: a full queue never sleeps on the loop and keeps the
order; a record Kafka refuses for good is handed to on_rejected, never retried (no services)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from bridge.kafka_sink import KafkaSink


class FakeProducer:
    def __init__(self) -> None:
        self.full = 0  # how many produce calls raise BufferError
        self.refuse: KafkaError | None = None
        self.queued: list[tuple[bytes, Callable[..., None]]] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, on_delivery: Callable[..., None],
                headers: Any = None) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        if self.refuse is not None:
            raise KafkaException(self.refuse)
        self.queued.append((value, on_delivery))

    def poll(self, timeout: float) -> int:
        served, self.queued = self.queued, []
        for _, report in served:
            report(None, None)
        return len(served)

    def __len__(self) -> int:
        return len(self.queued)


def sink_with(producer: FakeProducer) -> tuple[KafkaSink[int], list[int]]:
    sink: KafkaSink[int] = KafkaSink({"bootstrap.servers": "localhost:1"})
    sink._producer = producer  # type: ignore[assignment]
    confirmed: list[int] = []
    sink.on_confirmed = confirmed.extend
    return sink, confirmed


def test_a_full_queue_parks_records_in_order_without_sleeping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(time, "sleep", lambda s: pytest.fail("slept on the event loop"))
    producer = FakeProducer()
    sink, confirmed = sink_with(producer)
    producer.full = 2
    for token in range(5):
        sink.produce("t", b"%d" % token, None, None, token)
    assert [v for v, _ in producer.queued] == []  # the first was refused: the rest wait behind it
    assert sink.queued == 5
    sink.serve_once()  # one more BufferError, then room
    sink.serve_once()
    sink.serve_once()
    assert confirmed == [0, 1, 2, 3, 4]
    assert sink.queued == 0


def test_a_record_refused_for_good_goes_to_on_rejected_not_to_the_retries() -> None:
    producer = FakeProducer()
    sink, _confirmed = sink_with(producer)
    rejected: list[tuple[str, bytes, int, str]] = []
    sink.on_rejected = lambda topic, value, key, token, error: rejected.append(
        (topic, value, token, error))
    producer.refuse = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE)
    sink.produce("iot.readings", b"x" * 10, b"k", None, 7)
    assert [(t, v, tok) for t, v, tok, _ in rejected] == [("iot.readings", b"x" * 10, 7)]
    assert "MSG_SIZE_TOO_LARGE" in rejected[0][3]
    assert sink.queued == 0  # nothing held back for a retry
