"""One MQTT message -> one Kafka record: validate, attach the tenant, produce, then acknowledge.

Valid readings go to iot.readings keyed by device id; everything else goes to the DLQ with its
original bytes and a `reason` header. Either way the MQTT message is acknowledged only from
Kafka's delivery confirmation, through the connection's in-order AckTracker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Protocol

from bridge.kafka_sink import Record
from bridge.metrics import BridgeMetrics
from bridge.tenants import TenantLookup
from bridge.tracker import AckTracker, Ticket
from gateway.contract import InvalidTelemetry, Reason, parse_telemetry
from gateway.registry import RegistryError
from gateway.topics import device_id_from_topic

log = logging.getLogger(__name__)


class Sink(Protocol):
    """What the forwarder needs of the Kafka side (KafkaSink; a fake in unit tests)."""

    def produce(self, record: Record) -> None: ...


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

    def handle(
        self, tracker: AckTracker | None, topic: str, payload: bytes | bytearray, mid: int
    ) -> None:
        """Called by the MQTT source for each message; tracker is None for QoS 0."""
        started = time.monotonic()
        received_at = int(self._wall_clock() * 1000)
        self._counts.received += 1
        ticket = tracker.add(mid, started) if tracker is not None else None
        try:
            reading = parse_telemetry(topic, bytes(payload), received_at)
            tenant = self._tenant_of(reading.device_id)
            if tenant is None:
                raise InvalidTelemetry(Reason.UNKNOWN_DEVICE, "not in the device registry")
        except InvalidTelemetry as exc:
            self._dead_letter(ticket, started, topic, payload, exc, received_at)
            return
        self._sink.produce(
            Record(
                topic=self._readings_topic,
                key=reading.device_id.encode(),
                value=reading.to_kafka_value(tenant, received_at),
                headers=None,
                on_delivered=partial(self._confirmed, ticket, started, None),
            )
        )

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
        self,
        ticket: Ticket | None,
        started: float,
        topic: str,
        payload: bytes | bytearray,
        exc: InvalidTelemetry,
        received_at: int,
    ) -> None:
        device_id = device_id_from_topic(topic)
        # Debug: a misbehaving fleet must not flood the log; the DLQ counter has the totals.
        log.debug("dead-lettering message on %s: %s", topic[:120], exc)
        self._sink.produce(
            Record(
                topic=self._dlq_topic,
                key=device_id.encode() if device_id else None,
                value=bytes(payload),
                headers=[
                    ("reason", exc.reason.value.encode()),
                    ("mqtt_topic", topic.encode()),
                    ("received_at", str(received_at).encode()),
                    ("detail", exc.detail[:300].encode()),
                ],
                on_delivered=partial(self._confirmed, ticket, started, exc.reason),
            )
        )

    def _confirmed(self, ticket: Ticket | None, started: float, dlq: Reason | None) -> None:
        counts = self._counts
        counts.observe_latency(time.monotonic() - started)
        if dlq is None:
            counts.produced += 1
        else:
            counts.dlq[dlq] += 1
        if ticket is not None:
            ticket.complete()
