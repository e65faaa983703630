"""The MQTT side: a persistent-session MQTT 5 subscriber that acknowledges manually.

- clean start off + a session expiry: the broker keeps our subscription and queues for us while
  we are away, under our stable client id; on reconnect it resends what we did not acknowledge.
- Receive Maximum = max in flight: the broker sends at most that many unacknowledged messages, so
  when Kafka stalls the window fills, the broker stops sending and queues the rest (backpressure).
- Nothing is acknowledged here: the per-connection AckTracker does it, in order, once Kafka
  confirmed. The client (bridge/mqtt5.py) runs on the asyncio loop; a reconnect loop with
  exponential backoff and jitter wraps it.
- A PINGREQ unanswered for `bridge_ping_timeout_s` means a half-open connection: it is closed
  and a new one made. Mosquitto's Server Keep Alive, when it sends one, replaces ours.
- A session the broker no longer has on a reconnect (its queue is gone) is logged at WARNING and
  counted; a DISCONNECT "session taken over" (0x8E: another client connected with our id) at
  ERROR, counted, and the next attempt waits the longest backoff instead of fighting for the id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable

from bridge.config import BridgeSettings
from bridge.errors import BridgeError
from bridge.forwarder import Forwarder
from bridge.metrics import BridgeMetrics
from bridge.mqtt5 import Mqtt5Connection, MqttProtocolError, tls_context
from bridge.tracker import AckTracker
from gateway import mqtt_codec as codec
from gateway.mqtt_codec import Publish
from gateway.retry import Backoff, wait_or_stop

log = logging.getLogger(__name__)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"
_TICK_S = 1.0  # how often the connection's keep-alive and PINGRESP deadline are looked at


class SessionTakenOver(MqttProtocolError):
    """Mosquitto disconnected us because another client connected with our client id."""


class MqttSource:
    def __init__(
        self, settings: BridgeSettings, forwarder: Forwarder, metrics: BridgeMetrics,
        use_tls: bool = True,
    ) -> None:
        """`use_tls=False` only for unit tests against a fake broker on plain TCP."""
        self._tls: ssl.SSLContext | None = None
        if use_tls:
            for path in (settings.ca_file, settings.cert_file, settings.key_file):
                if not path.is_file():
                    raise BridgeError(f"missing TLS file {path} (issue the bridge certificate first)")
            self._tls = tls_context(str(settings.ca_file), str(settings.cert_file),
                                    str(settings.key_file))
        self._settings = settings
        self._forwarder = forwarder
        self._metrics = metrics
        self._tracker: AckTracker | None = None
        self._conn: Mqtt5Connection | None = None
        self._paused = False
        self.connected = False
        self.connections = 0
        self.broker_dropped = 0.0
        self._sys_dropped_seen = False
        metrics.in_flight.set_function(lambda: float(self.in_flight))
        forwarder.pause_reading = self._pause_reading
        forwarder.resume_reading = self._resume_reading

    @property
    def in_flight(self) -> int:
        tracker = self._tracker
        return tracker.in_flight if tracker is not None else 0

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and serve until stop (or pause); reconnect with backoff and jitter."""
        s = self._settings
        backoff = Backoff(s.bridge_reconnect_min_s, s.bridge_reconnect_max_s)
        while not stop.is_set() and not self._paused:
            try:
                await self._serve_connection(stop)
                backoff.reset()
            except SessionTakenOver as exc:
                log.error("Mosquitto ended our session: another client connected as %s (%s); "
                          "retrying in about %.0fs", s.bridge_client_id, exc, s.bridge_reconnect_max_s)
                backoff.saturate()
            except (OSError, ssl.SSLError, MqttProtocolError, TimeoutError) as exc:
                cause = "protocol_error" if isinstance(exc, MqttProtocolError) else "connect_failed"
                self._metrics.mqtt_disconnects.labels(cause=cause).inc()
                log.warning("MQTT connection to %s:%d failed: %s: %s", s.mqtt_host, s.mqtt_port,
                            exc.__class__.__name__, exc)
            if stop.is_set() or self._paused:
                return
            pause_s = backoff.next_delay()
            log.info("reconnecting to Mosquitto in %.1fs", pause_s)
            await wait_or_stop(stop, pause_s)

    async def _serve_connection(self, stop: asyncio.Event) -> None:
        s = self._settings
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(
                lambda: Mqtt5Connection(self._on_publishes, s.bridge_keepalive_s,
                                        s.bridge_max_packet_bytes),
                s.mqtt_host, s.mqtt_port, ssl=self._tls,
                server_hostname=s.mqtt_host if self._tls else None,
            ),
            10.0,
        )
        # The tracker exists before CONNECT: queued messages may follow CONNACK in the same read.
        tracker = AckTracker(self._send_ack(conn))
        self._tracker, self._conn = tracker, conn
        try:
            conn.send(codec.connect_v5(s.bridge_client_id, s.bridge_keepalive_s,
                                       s.bridge_session_expiry_s, s.bridge_max_in_flight,
                                       s.bridge_max_packet_bytes))
            connack = await asyncio.wait_for(conn.connected, 10.0)
            self._on_connected(connack.session_present, conn)
            # Subscribing again is harmless when the session kept the subscription, and needed
            # when it expired.
            codes = await conn.subscribe(1, s.bridge_subscription, 1)
            if not codes or codes[0] >= 0x80:
                raise BridgeError(f"subscription to {s.bridge_subscription} refused: {codes!r}")
            sys_codes = await conn.subscribe(2, s.bridge_sys_messages_filter, 0)
            if not sys_codes or sys_codes[0] >= 0x80:
                log.warning("no read access to %s: Mosquitto's drop counter is not exported",
                            s.bridge_sys_messages_filter)
            self.connected = True
            self._metrics.mqtt_connected.set(1)
            await self._keep_alive(conn)
            self._ended(conn)
        finally:
            self.connected = False
            self._metrics.mqtt_connected.set(0)
            conn.close()
            dropped = tracker.close()
            self._tracker = None
            if dropped and not self._paused:
                log.warning("disconnected; %d unacknowledged messages will be redelivered",
                            dropped)
            else:
                log.info("disconnected from Mosquitto; %d unacknowledged", dropped)

    def _on_connected(self, session_present: bool, conn: Mqtt5Connection) -> None:
        s = self._settings
        self.connections += 1
        log.info("connected to mqtts://%s:%d as %s (session present: %s, receive maximum %d, "
                 "keep alive %ds)", s.mqtt_host, s.mqtt_port, s.bridge_client_id, session_present,
                 s.bridge_max_in_flight, conn.keepalive_s)
        if session_present:
            return
        if self.connections > 1:
            self._metrics.mqtt_sessions_lost.inc()
            log.warning("Mosquitto no longer had the session of %s: the messages queued for it "
                        "while we were away are lost", s.bridge_client_id)
        else:
            log.info("no session of %s on the broker yet: a new one starts", s.bridge_client_id)

    async def _keep_alive(self, conn: Mqtt5Connection) -> None:
        """PINGREQ every half keep-alive; a PINGRESP overdue means the connection is half-open."""
        timeout_s = self._settings.bridge_ping_timeout_s
        last_ping = time.monotonic()
        while not conn.closed.done():
            tick_s = min(_TICK_S, timeout_s / 2, max(conn.keepalive_s, 1) / 4)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), tick_s)
            now = time.monotonic()
            sent_at = conn.ping_sent_at
            if sent_at is not None and now - sent_at > timeout_s and not conn.reading_paused:
                conn.close_cause = f"no PINGRESP within {timeout_s:.0f}s (half-open connection)"
                log.warning("MQTT connection is half-open: %s; reconnecting", conn.close_cause)
                conn.close()
                return
            if now - last_ping >= conn.keepalive_s / 2 and conn.keepalive_s:
                conn.ping()
                last_ping = now

    def _ended(self, conn: Mqtt5Connection) -> None:
        """Count why the connection ended; raise what the reconnect loop must tell apart."""
        reason = conn.disconnect_reason
        if reason == codec.SESSION_TAKEN_OVER:
            cause = "session_taken_over"
        elif reason is not None:
            cause = f"disconnect_{reason:#04x}"
        elif conn.close_cause.startswith("no PINGRESP"):
            cause = "ping_timeout"
        elif conn.close_cause.startswith("connection lost"):
            cause = "connection_lost"
        else:
            cause = "protocol_error"
        if not self._paused:
            self._metrics.mqtt_disconnects.labels(cause=cause).inc()
        if reason == codec.SESSION_TAKEN_OVER:
            raise SessionTakenOver(conn.close_cause)
        if not self._paused:
            log.warning("MQTT connection ended: %s", conn.close_cause)

    def _send_ack(self, conn: Mqtt5Connection) -> Callable[[list[int]], None]:
        counts = self._metrics.counts

        def send(packet_ids: list[int]) -> None:
            # Called under the tracker's lock: one writer at a time for `acked`.
            conn.ack(packet_ids)
            counts.acked += len(packet_ids)

        return send

    def _pause_reading(self) -> None:
        if self._conn is not None:
            self._conn.pause_reading()

    def _resume_reading(self) -> None:
        if self._conn is not None:
            self._conn.resume_reading()

    def pause(self) -> None:
        """Stop taking messages: later ones are left unacknowledged, for the broker to redeliver."""
        self._paused = True

    async def stop(self, timeout_s: float = 5.0) -> None:
        """DISCONNECT after the PUBACKs already queued (the session is kept)."""
        conn = self._conn
        if conn is not None and not conn.closed.done():
            conn.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(conn.closed), timeout_s)

    def _on_publishes(self, publishes: list[Publish]) -> None:
        for topic, _payload, _mid, dup in publishes:
            if dup or topic[:1] == "$":  # the rare cases, set apart only when there are any
                publishes = self._set_apart(publishes)
                break
        if self._paused or not publishes:
            return  # not acknowledged: the broker redelivers them to the next session
        tracker = self._tracker
        if tracker is None:
            return  # cannot happen inside a connection; never ack on the wrong one
        self._forwarder.handle(tracker, publishes)

    def _set_apart(self, publishes: list[Publish]) -> list[Publish]:
        """Count redeliveries and take out the $SYS messages; the rest go on."""
        telemetry: list[Publish] = []
        for item in publishes:
            if item[0].startswith("$SYS/"):
                self._on_sys(item[0], item[1])
                continue
            if item[3]:
                self._metrics.counts.redelivered += 1
            telemetry.append(item)
        return telemetry

    def _on_sys(self, topic: str, payload: bytes) -> None:
        if topic != SYS_DROPPED:
            if not self._sys_dropped_seen:
                self._metrics.broker_dropped.set(0)  # $SYS is readable, dropped never published
            return
        try:
            dropped = float(payload)
        except ValueError:
            return
        self._sys_dropped_seen = True
        if dropped != self.broker_dropped:
            log.error("Mosquitto has dropped %d queued messages in total (%s)", dropped, topic)
        self.broker_dropped = dropped
        self._metrics.broker_dropped.set(dropped)
