"""Watermark heartbeats with a recording producer: when, where and what they send."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from bridge.heartbeat import (
    HEADER,
    Heartbeat,
    heartbeat_value,
    is_heartbeat,
    producer_config,
    run_heartbeats,
)
from gateway.settings import KafkaConnection


class RecordingProducer:
    def __init__(self, fail_partitions: frozenset[int] = frozenset()) -> None:
        self.records: list[dict[str, Any]] = []
        self.polls = 0
        self.flushed = False
        self._fail = fail_partitions
        self._reports: list[Any] = []

    def produce(self, topic: str, value: bytes, key: bytes | None = None, *args: Any,
                **kwargs: Any) -> None:
        if kwargs["partition"] in self._fail:
            raise BufferError("queue full")
        self.records.append({"topic": topic, "value": value, "key": key, **kwargs})
        self._reports.append(kwargs["on_delivery"])

    def poll(self, timeout: float = 0) -> int:
        self.polls += 1
        reports, self._reports = self._reports, []
        for report in reports:
            report(None, None)
        return len(reports)

    def flush(self, timeout: float = 0) -> int:
        self.flushed = True
        self.poll(0)
        return 0


def test_a_beat_goes_to_every_partition_with_the_bridge_clock() -> None:
    producer = RecordingProducer()
    heartbeat = Heartbeat(producer, "iot.readings", [0, 1, 2], 1.0, clock=lambda: 1_764_000_000.5)
    assert heartbeat.beat() == 3
    assert [r["partition"] for r in producer.records] == [0, 1, 2]
    for record in producer.records:
        assert record["topic"] == "iot.readings" and record["key"] is None
        assert record["headers"] == [(HEADER, b"1")]
        body = json.loads(record["value"])
        # What the Flink job reads: no deviceId, no metrics; ts and receivedAt = the bridge clock.
        assert body == {"heartbeat": True, "ts": 1_764_000_000_500, "receivedAt": 1_764_000_000_500}
    assert heartbeat.delivered == 3 and heartbeat.last_ts_ms == 1_764_000_000_500


def test_a_full_queue_drops_that_beat_for_that_partition_only() -> None:
    producer = RecordingProducer(fail_partitions=frozenset({1}))
    heartbeat = Heartbeat(producer, "t", [0, 1, 2], 1.0)
    assert heartbeat.beat() == 2
    assert heartbeat.failed == 1 and heartbeat.sent == 2


def test_delivery_failures_are_counted_not_raised() -> None:
    heartbeat = Heartbeat(RecordingProducer(), "t", [0], 1.0)
    heartbeat._on_delivery("MSG_TIMED_OUT", None)
    assert heartbeat.failed == 1


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_a_non_positive_interval_is_refused(interval: float) -> None:
    with pytest.raises(ValueError, match="interval"):
        Heartbeat(RecordingProducer(), "t", [0], interval)


def test_no_partitions_is_refused() -> None:
    with pytest.raises(ValueError, match="no partitions"):
        Heartbeat(RecordingProducer(), "t", [], 1.0)


async def _run_for(heartbeat: Heartbeat, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await asyncio.wait_for(task, 2.0)


async def test_quiet_bridge_beats_every_interval_and_flushes_on_stop() -> None:
    producer = RecordingProducer()
    heartbeat = Heartbeat(producer, "t", [0, 1], 0.05)
    await _run_for(heartbeat, 0.33)
    beats = len(producer.records) // 2
    assert 4 <= beats <= 7
    assert producer.flushed


async def test_no_beat_while_messages_keep_arriving() -> None:
    """Under traffic the readings move the watermark; a heartbeat could overtake a backlog."""
    received = 0

    def activity() -> int:
        nonlocal received
        received += 1  # a message arrived during every interval
        return received

    producer = RecordingProducer()
    await _run_for(Heartbeat(producer, "t", [0], 0.05, activity=activity), 0.3)
    assert producer.records == []
    assert producer.polls > 0  # earlier beats' reports are still served


async def test_beats_resume_once_the_bridge_is_quiet() -> None:
    counter = {"received": 0}
    producer = RecordingProducer()
    heartbeat = Heartbeat(producer, "t", [0], 0.05, activity=lambda: counter["received"])
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat.run(stop))
    for _ in range(5):
        counter["received"] += 1
        await asyncio.sleep(0.05)
    assert len(producer.records) <= 1  # at most one interval straddled a quiet gap
    await asyncio.sleep(0.3)
    stop.set()
    await asyncio.wait_for(task, 2.0)
    assert len(producer.records) >= 3


async def test_no_beat_while_the_gate_is_closed() -> None:
    """The wiring closes the gate while MQTT is down or readings are unconfirmed."""
    gate = {"open": False}
    producer = RecordingProducer()
    heartbeat = Heartbeat(producer, "t", [0], 0.05, may_beat=lambda: gate["open"])
    stop = asyncio.Event()
    task = asyncio.create_task(heartbeat.run(stop))
    await asyncio.sleep(0.2)
    assert producer.records == []
    gate["open"] = True
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(task, 2.0)
    assert len(producer.records) >= 2


async def test_run_heartbeats_returns_its_figures() -> None:
    stop = asyncio.Event()
    producer = RecordingProducer()
    task = asyncio.create_task(run_heartbeats(producer, "t", [3], 0.05, stop))
    await asyncio.sleep(0.2)
    stop.set()
    heartbeat = await asyncio.wait_for(task, 2.0)
    assert heartbeat.sent >= 2 and heartbeat.delivered == heartbeat.sent


def test_is_heartbeat_by_header_or_value() -> None:
    assert is_heartbeat([(HEADER, b"1")])
    assert is_heartbeat(None, heartbeat_value(1))
    assert not is_heartbeat([("reason", b"x")], b'{"deviceId": "d", "ts": 1}')
    assert not is_heartbeat(None, None)
    assert not is_heartbeat(None, b"")
    # A device cannot forge one: the bridge writes readings with a deviceId first.
    assert not is_heartbeat(None, b'{"deviceId": "d", "heartbeat": true}')


def test_producer_gives_up_on_a_beat_after_a_few_intervals() -> None:
    config = producer_config(KafkaConnection(kafka_bootstrap="k:9092"), 1.0)
    assert config["bootstrap.servers"] == "k:9092"
    assert config["message.timeout.ms"] == 3000
    assert producer_config(KafkaConnection(kafka_bootstrap="k"), 0.1)["message.timeout.ms"] == 1000
