"""The MQTT side: a persistent-session MQTT 5 client that acknowledges manually.

- clean_start=False + a session expiry: the broker keeps our subscription and queues for us while
  we are away, under our stable client id; on reconnect it resends what we did not acknowledge.
- Receive Maximum = max in flight: the broker sends at most that many unacknowledged messages, so
  when Kafka stalls the window fills, the broker stops sending and queues the rest (backpressure).
- manual_ack=True: paho never PUBACKs by itself; the per-connection AckTracker does, in order.

paho's network loop runs in its own thread and reconnects by itself with exponential backoff.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bridge.config import BridgeSettings
from bridge.errors import BridgeError
from bridge.forwarder import Forwarder
from bridge.metrics import BridgeMetrics
from bridge.tracker import AckTracker

log = logging.getLogger(__name__)

SYS_DROPPED = "$SYS/broker/publish/messages/dropped"


class MqttSource:
    def __init__(
        self, settings: BridgeSettings, forwarder: Forwarder, metrics: BridgeMetrics
    ) -> None:
        self._settings = settings
        self._forwarder = forwarder
        self._metrics = metrics
        self._tracker: AckTracker | None = None
        self._paused = False
        self._disconnected = threading.Event()
        self.connected = False
        self.connections = 0
        self.broker_dropped = 0.0
        self._sys_dropped_seen = False
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.bridge_client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        for path in (settings.ca_file, settings.cert_file, settings.key_file):
            if not path.is_file():
                raise BridgeError(f"missing TLS file {path} (issue the bridge certificate first)")
        client.tls_set(
            ca_certs=str(settings.ca_file),
            certfile=str(settings.cert_file),
            keyfile=str(settings.key_file),
        )
        client.reconnect_delay_set(
            int(max(1, settings.bridge_reconnect_min_s)), int(settings.bridge_reconnect_max_s)
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_connect_fail = self._on_connect_fail
        self._client = client
        metrics.in_flight.set_function(lambda: float(self.in_flight))

    @property
    def in_flight(self) -> int:
        tracker = self._tracker
        return tracker.in_flight if tracker is not None else 0

    def start(self) -> None:
        s = self._settings
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.bridge_session_expiry_s
        props.ReceiveMaximum = s.bridge_max_in_flight
        log.info(
            "connecting to mqtts://%s:%d as %s (receive maximum %d)",
            s.mqtt_host, s.mqtt_port, s.bridge_client_id, s.bridge_max_in_flight,
        )
        self._client.connect_async(
            s.mqtt_host, s.mqtt_port, keepalive=s.bridge_keepalive_s, clean_start=False,
            properties=props,
        )
        self._client.loop_start()

    def pause(self) -> None:
        """Stop taking messages: later ones are left unacknowledged, for the broker to redeliver."""
        self._paused = True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Disconnect (the PUBACKs already queued go out first) and stop the network thread."""
        if self.connected:
            self._client.disconnect()
            self._disconnected.wait(timeout_s)
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
        reason: ReasonCode, properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            log.error("Mosquitto refused the connection: %s", reason)
            return
        self.connections += 1
        self._tracker = AckTracker(self._send_ack)
        self.connected = True
        self._disconnected.clear()
        self._metrics.mqtt_connected.set(1)
        log.info("connected to Mosquitto (session present: %s)", flags.session_present)
        # Subscribing again is harmless when the session kept the subscription, and needed when
        # the session expired.
        client.subscribe(self._settings.bridge_subscription, qos=1)
        client.subscribe(self._settings.bridge_sys_messages_filter, qos=0)

    def _send_ack(self, mid: int) -> None:
        self._client.ack(mid, 1)
        self._metrics.acked.inc()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
        reason: ReasonCode, properties: Properties | None,
    ) -> None:
        self.connected = False
        self._metrics.mqtt_connected.set(0)
        tracker, self._tracker = self._tracker, None
        dropped = tracker.close() if tracker is not None else 0
        self._disconnected.set()
        if self._paused:
            log.info("disconnected from Mosquitto (%s); %d unacknowledged", reason, dropped)
        else:
            log.warning(
                "disconnected from Mosquitto (%s); %d unacknowledged messages will be redelivered",
                reason, dropped,
            )

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        log.warning("could not connect to Mosquitto at %s:%d; retrying with backoff",
                    self._settings.mqtt_host, self._settings.mqtt_port)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic
        if topic.startswith("$SYS/"):
            self._on_sys(topic, msg.payload)
            return
        if self._paused:
            return
        tracker = self._tracker
        if msg.qos > 0 and tracker is None:
            return  # cannot happen inside a connection; never ack on the wrong one
        if msg.dup:
            self._metrics.redelivered.inc()
        self._forwarder.handle(tracker if msg.qos > 0 else None, topic, msg.payload, msg.mid)

    def _on_sys(self, topic: str, payload: bytes | bytearray) -> None:
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
