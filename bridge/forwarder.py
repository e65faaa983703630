"""MQTT messages -> Kafka records: validate, attach the tenant, produce, then acknowledge.

Valid readings go to iot.readings keyed by device id; everything else goes to the DLQ with its
original bytes and a `reason` header. Either way the MQTT message is acknowledged only once
Kafka confirmed it: each record's token names its connection's AckTracker and its number there,
and `confirmed` marks those and releases the in-order prefix, once per batch of confirmations.
Messages come a read at a time and confirmations a poll at a time, so the per-message work is
one loop each, with the clocks read once per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from bridge.kafka_sink import Headers
from bridge.metrics import BridgeMetrics
from bridge.mqtt5 import Publish
from bridge.tenants import TenantLookup
from bridge.tracker import AckTracker
from gateway.contract import InvalidTelemetry, Reason, parse_telemetry
from gateway.registry import RegistryError
from gateway.topics import device_id_from_topic

log = logging.getLogger(__name__)

# (tracker or None for QoS 0, number in the tracker, monotonic receipt time, DLQ reason or None)
Token = tuple[AckTracker | None, int, float, Reason | None]


class Sink(Protocol):
    """What the forwarder needs of the Kafka side (KafkaSink; a fake in unit tests)."""

    def produce(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers | None, token: Token
    ) -> None: ...


class Forwarder:
    def __init__(
        self,
        sink: Sink,
        tenants: TenantLookup,
        metrics: BridgeMetrics,
        readings_topic: str,
        dlq_topic: str,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._sink = sink
        self._tenants = tenants
        self._counts = metrics.counts
        self._readings_topic = readings_topic
        self._dlq_topic = dlq_topic
        self._wall_clock = wall_clock

    def handle(self, tracker: AckTracker | None, publishes: list[Publish]) -> None:
        """One read's messages, in arrival order; QoS 0 ones (packet id 0) are not tracked."""
        started = time.monotonic()
        received_at = int(self._wall_clock() * 1000)
        self._counts.received += len(publishes)
        produce, readings_topic, tenant_of = self._sink.produce, self._readings_topic, self._tenant_of
        for topic, payload, mid, _dup in publishes:
            owner = tracker if mid else None
            number = owner.add(mid) if owner is not None else 0
            try:
                reading = parse_telemetry(topic, payload, received_at)
                tenant = tenant_of(reading.device_id)
                if tenant is None:
                    raise InvalidTelemetry(Reason.UNKNOWN_DEVICE, "not in the device registry")
            except InvalidTelemetry as exc:
                self._dead_letter((owner, number, started, exc.reason), topic, payload, exc,
                                  received_at)
                continue
            produce(readings_topic, reading.to_kafka_value(tenant, received_at),
                    reading.device_id.encode(), None, (owner, number, started, None))

    def _tenant_of(self, device_id: str) -> str | None:
        # The registry being unreachable says nothing about the message: hold it (and with it the
        # MQTT window) and retry, rather than dead-lettering a valid reading.
        delay = 0.2
        while True:
            try:
                return self._tenants.tenant_of(device_id)
            except RegistryError as exc:
                log.warning("tenant of %s unknown for now, retrying in %.1fs: %s",
                            device_id, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _dead_letter(
        self, token: Token, topic: str, payload: bytes, exc: InvalidTelemetry, received_at: int
    ) -> None:
        device_id = device_id_from_topic(topic)
        # Debug: a misbehaving fleet must not flood the log; the DLQ counter has the totals.
        log.debug("dead-lettering message on %s: %s", topic[:120], exc)
        headers: Headers = [
            ("reason", exc.reason.value.encode()),
            ("mqtt_topic", topic.encode()),
            ("received_at", str(received_at).encode()),
            ("detail", exc.detail[:300].encode()),
        ]
        self._sink.produce(self._dlq_topic, payload, device_id.encode() if device_id else None,
                           headers, token)

    def confirmed(self, tokens: list[Token]) -> None:
        """Kafka has these records: count them, time them, acknowledge what is now in order."""
        counts = self._counts
        now = time.monotonic()
        produced = 0
        run_started, run_length = -1.0, 0  # consecutive tokens of one read: one observation
        numbers_of: dict[AckTracker, list[int]] = {}
        for owner, number, started, reason in tokens:
            if started != run_started:
                if run_length:
                    counts.observe_latency(now - run_started, run_length)
                run_started, run_length = started, 0
            run_length += 1
            if reason is None:
                produced += 1
            else:
                counts.dlq[reason] += 1
            if owner is not None:
                numbers = numbers_of.get(owner)
                if numbers is None:
                    numbers = numbers_of[owner] = []
                numbers.append(number)
        if run_length:
            counts.observe_latency(now - run_started, run_length)
        counts.produced += produced
        for owner, numbers in numbers_of.items():
            owner.confirm(numbers)
            owner.release()
