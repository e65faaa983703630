"""The Kafka side: an idempotent, batching confluent-kafka producer served on the event loop.

`produce` never blocks for long: librdkafka batches. Each record carries a token; delivery
reports collect the tokens of what Kafka confirmed, and after each poll they are handed to
`on_confirmed` in one list, which is what finally lets the MQTT side acknowledge. The reports
are served by a task on the bridge's own event loop, not by a polling thread: a second Python
thread made both contend for the GIL on every message (py-spy: a fifth of the samples).
A failed delivery is produced again after a pause, from the report's own copy of the record, so
a record is either confirmed or still held (and then not acknowledged to MQTT): never dropped.
Errors that no retry can cure (the record itself is refused: too large, invalid) go to
`on_rejected` instead, which dead-letters or drops it, so one such record cannot hold back the
in-order PUBACKs. When librdkafka's queue is full, records wait in order in an overflow queue
that the serving task empties: nothing sleeps on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Generic, TypeVar

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from bridge.errors import BridgeError

log = logging.getLogger(__name__)

_RETRY_AFTER_S = 1.0
_FAILURE_LOG_EVERY_S = 10.0
# How often the loop serves delivery reports while records are out: a confirmation waits at most
# this long for its PUBACK. With nothing out, a slower beat still serves errors and retries.
_SERVE_BUSY_S = 0.001
_SERVE_IDLE_S = 0.05
# Refusals of the record itself: producing it again fails the same way.
PERMANENT_ERRORS = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.RECORD_LIST_TOO_LARGE,
    KafkaError.INVALID_MSG, KafkaError.INVALID_MSG_SIZE, KafkaError._BAD_MSG,
    KafkaError._INVALID_ARG,
})

Headers = list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None]
T = TypeVar("T")


class KafkaSink(Generic[T]):
    """Produces records, each with a token of type T that comes back through `on_confirmed`."""

    def __init__(self, config: Mapping[str, str | int | float | bool]) -> None:
        conf: dict[str, Any] = {**config, "error_cb": self._on_error}
        try:
            self._producer = Producer(conf)
        except KafkaException as exc:
            raise BridgeError(f"bad Kafka producer config: {exc}") from exc
        self._confirmed: list[T] = []
        self._retries: deque[tuple[float, str, bytes, bytes | None, Headers | None, T]] = deque()
        # Records librdkafka had no room for yet, in order; produced before any newer one.
        self._overflow: deque[tuple[str, bytes, bytes | None, Headers | None, T]] = deque()
        self._server: asyncio.Task[None] | None = None
        self._failures_logged_at = 0.0
        self._failures_unlogged = 0
        self.fatal_error: str | None = None
        self.brokers_up = True
        self.delivery_errors = 0
        self.on_confirmed: Callable[[list[T]], None] = lambda tokens: None
        self.on_delivery_error: Callable[[str], None] = lambda reason: None
        # (topic, value, key, token, error): Kafka refused the record for good.
        self.on_rejected: Callable[[str, bytes, bytes | None, T, str], None] = (
            lambda topic, value, key, token, error: None
        )

    def start(self) -> None:
        """Serve delivery reports on the running event loop until `stop_serving`."""
        self._server = asyncio.get_running_loop().create_task(self._serve(), name="kafka-deliveries")

    async def stop_serving(self) -> None:
        """After this, only `flush`/`close` serve delivery reports (one thread at a time)."""
        if self._server is not None:
            self._server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._server
            self._server = None

    def produce(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers | None, token: T
    ) -> None:
        if self._overflow:  # keep the order: behind those already waiting
            self._overflow.append((topic, value, key, headers, token))
            return
        self._produce(topic, value, key, headers, token)

    def _produce(
        self, topic: str, value: bytes, key: bytes | None, headers: Headers | None, token: T
    ) -> bool:
        """False when librdkafka's queue is full (the record is then in the overflow queue)."""
        try:
            # partial, not a lambda: one Python frame less per delivery report.
            self._producer.produce(
                topic, value, key, on_delivery=partial(self._delivered, token), headers=headers
            )
        except BufferError:
            # librdkafka's own queue is full (far above the MQTT window): deliveries drain it.
            self._overflow.append((topic, value, key, headers, token))
            return False
        except KafkaException as exc:
            self._fail(exc.args[0], topic, value, key, headers, token)
        return True

    def _produce_overflow(self) -> None:
        overflow = self._overflow
        while overflow:
            topic, value, key, headers, token = overflow.popleft()
            if not self._produce(topic, value, key, headers, token):
                overflow.rotate(1)  # put back in front: it was appended at the end
                return

    def _delivered(self, token: T, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self._confirmed.append(token)
            return
        self._fail(err, msg.topic() or "", msg.value() or b"", msg.key(), msg.headers(), token)

    def _fail(self, err: KafkaError, topic: str, value: bytes, key: bytes | None,
              headers: Headers | None, token: T) -> None:
        self.delivery_errors += 1
        self.on_delivery_error(err.name())
        if err.code() in PERMANENT_ERRORS and not err.fatal():
            log.error("Kafka refused a record for good on %s (key %r, %d bytes): %s",
                      topic, key, len(value), err.str())
            self.on_rejected(topic, value, key, token, f"{err.name()}: {err.str()}")
            return
        if err.fatal():
            # The idempotent producer cannot continue; nothing unconfirmed was acknowledged, so
            # exiting and letting the broker redeliver is safe.
            self.fatal_error = f"{err.name()}: {err.str()}"
            log.error("fatal Kafka error on topic %s: %s", topic, self.fatal_error)
            return
        now = time.monotonic()
        if now - self._failures_logged_at >= _FAILURE_LOG_EVERY_S:
            log.warning("delivery to %s failed (key %r): %s; retrying in %.0fs (%d more failures "
                        "since the last report)", topic, key, err.str(), _RETRY_AFTER_S,
                        self._failures_unlogged)
            self._failures_logged_at, self._failures_unlogged = now, 0
        else:
            self._failures_unlogged += 1
        self._retries.append((now + _RETRY_AFTER_S, topic, value, key, headers, token))

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self.brokers_up = False
        if err.fatal():
            self.fatal_error = f"{err.name()}: {err.str()}"
        log.warning("Kafka client error: %s", err.str())

    async def _serve(self) -> None:
        producer = self._producer
        while True:
            try:
                self.serve_once()
            except Exception:  # a failing callback must not stop every later confirmation
                log.exception("serving Kafka delivery reports failed; continuing")
            await asyncio.sleep(_SERVE_BUSY_S if len(producer) else _SERVE_IDLE_S)

    def serve_once(self, timeout_s: float = 0.0) -> None:
        """Serve the delivery reports that are ready, hand the confirmations over, retry."""
        self._producer.poll(timeout_s)
        self._hand_over()
        self._produce_overflow()
        self._retry_due()

    def _hand_over(self) -> None:
        if self._confirmed:
            tokens, self._confirmed = self._confirmed, []
            self.brokers_up = True
            self.on_confirmed(tokens)

    def _retry_due(self) -> None:
        now = time.monotonic()
        while self._retries and self._retries[0][0] <= now:
            _, topic, value, key, headers, token = self._retries.popleft()
            self.produce(topic, value, key, headers, token)

    @property
    def queued(self) -> int:
        """Records handed to librdkafka and not yet confirmed, plus those waiting for a retry."""
        return len(self._producer) + len(self._retries) + len(self._overflow)

    def warm_up(self, topics: list[str], timeout_s: float = 5.0) -> None:
        """Fetch the topics' metadata before the first message needs it, so that the first
        messages do not wait for it; Kafka being down here only costs that wait later."""
        for topic in topics:
            try:
                self._producer.list_topics(topic, timeout=timeout_s)
            except KafkaException as exc:
                log.warning("no metadata for %s yet: %s", topic, exc)

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding deliveries (retries included); returns how many are still held."""
        deadline = time.monotonic() + timeout_s
        while self.queued and time.monotonic() < deadline and self.fatal_error is None:
            self._producer.flush(min(0.2, max(0.0, deadline - time.monotonic())))
            self._hand_over()
            self._produce_overflow()
            self._retry_due()
        self._hand_over()
        return self.queued

    def close(self, timeout_s: float) -> int:
        """Flush and report what stayed unconfirmed; call after `stop_serving`, so that every
        per-message counter keeps a single writer (bridge/metrics.py)."""
        if self._server is not None:
            raise RuntimeError("KafkaSink.close while the loop still serves deliveries")
        remaining = self.flush(timeout_s)
        if remaining:
            log.warning("%d records still unconfirmed by Kafka at shutdown (not acknowledged)",
                        remaining)
        return remaining
