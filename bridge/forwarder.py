"""MQTT messages -> Kafka records: validate, attach the tenant, produce, then acknowledge.

Valid readings go to iot.readings keyed by device id; everything else goes to the DLQ with its
original bytes (a prefix of them past the contract's size limit, with the original size) and a
`reason` header. Whatever goes wrong with one message, that message is dead-lettered with a
reason (`internal_error` and a `detail` for the unforeseen) and the connection stays up.
Either way the MQTT message is acknowledged only once Kafka confirmed it: each record's token
names its connection's AckTracker and its number there, and `confirmed` marks those and releases
the in-order prefix, once per batch of confirmations. Messages come a read at a time and
confirmations a poll at a time, so the per-message work is one loop each, with the clocks read
once per batch.

A device whose tenant only the registry can tell is looked up in a worker thread; meanwhile
reading from Mosquitto is paused (backpressure) and later messages wait behind it in arrival
order. A registry that does not answer is retried with an asyncio backoff: the loop keeps
serving PINGs, PUBACKs and Kafka's delivery reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from bridge.kafka_sink import Headers
from bridge.metrics import BridgeMetrics
from bridge.tenants import TenantLookup
from bridge.tracker import AckTracker
from gateway.contract import (
    DLQ_PAYLOAD_PREFIX_BYTES,
    MAX_PAYLOAD_BYTES,
    InvalidTelemetry,
    Reason,
    parse_telemetry,
)
from gateway.mqtt_codec import Publish
from gateway.registry import RegistryError
from gateway.retry import Backoff, retry_async
from gateway.topics import device_id_from_topic, telemetry_topic

log = logging.getLogger(__name__)

# (tracker or None for QoS 0, number in the tracker, monotonic receipt time, DLQ reason or None)
Token = tuple[AckTracker | None, int, float, Reason | None]
# A read's messages not forwarded yet: (tracker, messages, receipt time, receipt wall clock ms)
_Pending = tuple[AckTracker | None, list[Publish], float, int]

_REGISTRY_RETRY_MIN_S = 0.2
_REGISTRY_RETRY_MAX_S = 5.0
_HEADER_TOPIC_BYTES = 1024  # a topic may be 64 KiB; the DLQ header keeps its start
_KEY_BYTES = 256
_INTERNAL_LOG_EVERY_S = 10.0


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
        # Not None while a registry lookup is out: later reads wait here, in arrival order.
        self._backlog: deque[_Pending] | None = None
        self._looked_up: dict[str, str | None] = {}
        self._lookup_task: asyncio.Task[None] | None = None
        self._internal_logged_at = 0.0
        # The device's groups' aggregate keys (gateway.groups.MembershipCache.groups_of).
        self.groups_of: Callable[[str], tuple[str, ...]] = lambda _device_id: ()
        # Set by the MQTT side: stop and restart reading from the broker.
        self.pause_reading: Callable[[], None] = lambda: None
        self.resume_reading: Callable[[], None] = lambda: None

    @property
    def waiting_for_registry(self) -> bool:
        return self._backlog is not None

    def handle(self, tracker: AckTracker | None, publishes: list[Publish]) -> None:
        """One read's messages, in arrival order; QoS 0 ones (packet id 0) are not tracked."""
        started = time.monotonic()
        received_at = int(self._wall_clock() * 1000)
        self._counts.received += len(publishes)
        if self._backlog is not None:
            self._backlog.append((tracker, publishes, started, received_at))
            return
        index = self._forward(tracker, publishes, started, received_at)
        if index >= 0:
            self._backlog = deque([(tracker, publishes[index:], started, received_at)])
            self.pause_reading()
            self._lookup_task = asyncio.get_running_loop().create_task(
                self._drain_backlog(), name="tenant-lookup"
            )

    def _forward(
        self, tracker: AckTracker | None, publishes: list[Publish], started: float, received_at: int
    ) -> int:
        """Forward the messages; stop at the first whose tenant only the registry can tell and
        return its index (-1 when all went)."""
        produce, readings_topic, cached = self._sink.produce, self._readings_topic, self._tenants.cached
        groups_of = self.groups_of
        for index, (topic, payload, mid, _dup) in enumerate(publishes):
            token: Token | None = None
            try:
                reading = parse_telemetry(topic, payload, received_at)
                tenant = cached(reading.device_id)
                if tenant is None:
                    if self._must_look_up(reading.device_id):
                        return index
                    tenant = self._looked_up.get(reading.device_id)
                    if tenant is None:
                        raise InvalidTelemetry(Reason.UNKNOWN_DEVICE, "not in the device registry")
                value = reading.to_kafka_value(tenant, received_at, groups_of(reading.device_id))
                owner = tracker if mid else None
                token = (owner, owner.add(mid) if owner is not None else 0, started, None)
                produce(readings_topic, value, reading.device_id.encode(), None, token)
            except InvalidTelemetry as exc:
                token = token or self._token(tracker, mid, started)
                self.dead_letter(token, topic, payload, exc.reason, exc.detail, received_at)
            except Exception as exc:  # a bug must cost one message, never the connection
                self._log_internal(topic, exc)
                token = token or self._token(tracker, mid, started)
                detail = f"{exc.__class__.__name__}: {exc}"
                self.dead_letter(token, topic, payload, Reason.INTERNAL_ERROR, detail, received_at)
        return -1

    @staticmethod
    def _token(tracker: AckTracker | None, mid: int, started: float) -> Token:
        owner = tracker if mid else None
        return (owner, owner.add(mid) if owner is not None else 0, started, None)

    def _must_look_up(self, device_id: str) -> bool:
        return device_id not in self._looked_up and self._tenants.needs_lookup(device_id)

    def _log_internal(self, topic: str, exc: Exception) -> None:
        now = time.monotonic()
        if now - self._internal_logged_at >= _INTERNAL_LOG_EVERY_S:
            self._internal_logged_at = now
            log.error("failed on a message on %s, dead-lettered as internal_error: %s: %s",
                      topic[:120], exc.__class__.__name__, exc, exc_info=exc)

    async def _drain_backlog(self) -> None:
        backlog = self._backlog
        assert backlog is not None
        try:
            while backlog:
                tracker, publishes, started, received_at = backlog[0]
                if tracker is not None and tracker.closed:
                    backlog.popleft()  # its connection is gone: the broker redelivers them
                    continue
                index = self._forward(tracker, publishes, started, received_at)
                if index < 0:
                    backlog.popleft()
                    continue
                backlog[0] = (tracker, publishes[index:], started, received_at)
                device_id = device_id_from_topic(publishes[index][0]) or ""
                self._looked_up[device_id] = await self._look_up(device_id)
        finally:
            self._backlog = None
            self._looked_up.clear()
            self.resume_reading()

    async def _look_up(self, device_id: str) -> str | None:
        """The registry being unreachable says nothing about the message: hold it (and with it
        the MQTT window) and retry, rather than dead-lettering a valid reading."""
        def told(exc: BaseException, delay: float) -> None:
            log.warning("tenant of %s unknown for now, reading from Mosquitto paused, "
                        "retrying in %.1fs: %s", device_id, delay, exc)

        return await retry_async(
            lambda: asyncio.to_thread(self._tenants.tenant_of, device_id), (RegistryError,),
            Backoff(_REGISTRY_RETRY_MIN_S, _REGISTRY_RETRY_MAX_S), on_retry=told,
        )

    async def stop(self) -> None:
        """Give up a pending lookup (its messages stay unacknowledged: the broker redelivers)."""
        task = self._lookup_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def dead_letter(
        self, token: Token, topic: str, payload: bytes, reason: Reason, detail: str,
        received_at: int,
    ) -> None:
        """Produce the message to the DLQ under its token, with the reason set."""
        owner, number, started, _ = token
        device_id = device_id_from_topic(topic)
        # Debug: a misbehaving fleet must not flood the log; the DLQ counter has the totals.
        log.debug("dead-lettering message on %s: %s: %s", topic[:120], reason.value, detail[:200])
        headers: list[tuple[str, str | bytes | None]] = [
            ("reason", reason.value.encode()),
            ("mqtt_topic", topic.encode(errors="replace")[:_HEADER_TOPIC_BYTES]),
            ("received_at", str(received_at).encode()),
            ("detail", detail[:300].encode(errors="replace")),
        ]
        if len(payload) > MAX_PAYLOAD_BYTES:
            # Whatever Mosquitto accepts fits: the record keeps a prefix and the original size.
            headers.append(("payload_bytes", str(len(payload)).encode()))
            payload = payload[:DLQ_PAYLOAD_PREFIX_BYTES]
        # A valid id has at most 64 characters; a bad one must not make a 64 KiB key.
        key = device_id.encode(errors="replace")[:_KEY_BYTES] if device_id else None
        try:
            self._sink.produce(self._dlq_topic, payload, key, headers, (owner, number, started, reason))
        except Exception as exc:  # nothing left to try: count it, log it, let the window move
            self.drop((owner, number, started, reason), f"DLQ produce failed: {exc}", topic)

    def drop(self, token: Token, why: str, topic: str) -> None:
        """Acknowledge a message that cannot be written anywhere: counted and logged, so that it
        does not hold back the in-order PUBACKs of every message after it."""
        owner, number, _, reason = token
        self._counts.dropped += 1
        log.error("dropped a message on %s (reason %s): %s", topic[:120],
                  reason.value if reason else "none", why)
        if owner is not None:
            owner.confirm((number,))
            owner.release()

    def rejected(self, topic: str, value: bytes, key: bytes | None, token: Token, error: str) -> None:
        """Kafka refused the record for good (e.g. MSG_SIZE_TOO_LARGE): a reading goes to the
        DLQ with reason kafka_rejected (the record as it was refused), a dead letter is dropped
        (counted and logged)."""
        if topic == self._readings_topic and token[3] is None:
            mqtt_topic = telemetry_topic(key.decode(errors="replace")) if key else ""
            self.dead_letter(token, mqtt_topic, value, Reason.KAFKA_REJECTED, error,
                             int(self._wall_clock() * 1000))
        else:
            self.drop(token, f"Kafka refused the dead letter: {error}", topic)

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
