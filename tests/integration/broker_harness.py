"""Helpers of the broker tests: paho clients with persistent sessions that count what Mosquitto
acknowledged, SUBSCRIBE outcomes, and opening the broker's telemetry gate.

The broker refuses device telemetry (unacknowledged) until a bridge identity has subscribed to a
telemetry group since it started (mosquitto/iot_edge.c). A test without a bridge opens that gate
with a group of its own: groups are independent, so it takes nothing from any other subscriber.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway import pki, topics
from gateway.contract import telemetry_payload
from stack.config import StackSettings
from stack.services.mosquitto import open_telemetry_gate

__all__ = ["Fleet", "group_subscription", "open_telemetry_gate", "paho_client", "subscribe_codes"]


def paho_client(identity: pki.Identity, client_id: str = "", v5: bool = True,
                clean: bool = True) -> mqtt.Client:
    if v5:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv5)
    else:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                             protocol=mqtt.MQTTv311, clean_session=clean)
    client.tls_set(ca_certs=str(identity.ca), certfile=str(identity.cert),
                   keyfile=str(identity.key))
    return client


def group_subscription(group: str) -> str:
    return f"$share/{group}/{topics.MQTT_TELEMETRY_FILTER}"


def subscribe_codes(settings: StackSettings, identity: pki.Identity, filters: Iterable[str],
                    client_id: str = "") -> list[int]:
    """The SUBACK reason code of each filter (MQTT 5, one SUBSCRIBE each, clean start)."""
    client = paho_client(identity, client_id)
    codes: list[int] = []
    acked = threading.Event()
    connected = threading.Event()

    def on_subscribe(c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode],
                     p: Properties | None) -> None:
        codes.extend(rc.value for rc in rcs)
        acked.set()

    client.on_subscribe = on_subscribe
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.connect("localhost", settings.mqtt_port, clean_start=True)
    client.loop_start()
    try:
        assert connected.wait(10), "no CONNACK"
        for filter_ in filters:
            acked.clear()
            client.subscribe(filter_, qos=1)
            assert acked.wait(10), f"no SUBACK for {filter_}"
    finally:
        client.disconnect()
        client.loop_stop()
    return codes


@dataclass
class Fleet:
    """Devices publishing telemetry at QoS 1 with paho (MQTT 3.1.1, persistent sessions, so
    what the broker did not acknowledge is sent again after a reconnect)."""

    settings: StackSettings
    device_ids: list[str]
    rate_per_device: float
    acked: dict[str, set[int]] = field(default_factory=dict)
    sent: dict[str, int] = field(default_factory=dict)
    disconnects: int = 0

    def __post_init__(self) -> None:
        self._clients: dict[str, mqtt.Client] = {}
        self._mids: dict[str, dict[int, int]] = {d: {} for d in self.device_ids}
        # PUBACKs that arrived before publish() returned their mid to us.
        self._early: dict[str, set[int]] = {d: set() for d in self.device_ids}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        for device_id in self.device_ids:
            self.acked[device_id] = set()
            self.sent[device_id] = 0
            client = paho_client(pki.device_paths(self.settings.pki_dir, device_id), device_id,
                                 v5=False, clean=False)
            client.max_inflight_messages_set(20)
            client.max_queued_messages_set(0)
            client.reconnect_delay_set(1, 2)
            client.on_publish = self._on_publish(device_id)
            client.on_disconnect = self._on_disconnect
            self._clients[device_id] = client

    def _on_publish(self, device_id: str):  # type: ignore[no-untyped-def]
        def on_publish(c: mqtt.Client, u: object, mid: int, rc: ReasonCode, p: object) -> None:
            # Called with paho's own lock held: never call into paho while holding self._lock.
            with self._lock:
                seq = self._mids[device_id].pop(mid, None)
                if seq is None:
                    self._early[device_id].add(mid)
                else:
                    self.acked[device_id].add(seq)
        return on_publish

    def _on_disconnect(self, c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
        with self._lock:
            self.disconnects += 1

    def start(self, count_per_device: int) -> None:
        for client in self._clients.values():
            client.connect_async("localhost", self.settings.mqtt_port, keepalive=10)
            client.loop_start()
        for device_id in self.device_ids:
            thread = threading.Thread(target=self._run, args=(device_id, count_per_device),
                                      daemon=True)
            thread.start()
            self._threads.append(thread)

    def _run(self, device_id: str, count: int) -> None:
        client = self._clients[device_id]
        started = time.monotonic()
        base_ms = int(time.time() * 1000)
        topic = topics.telemetry_topic(device_id)
        for seq in range(count):
            delay = started + seq / self.rate_per_device - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            payload = telemetry_payload(base_ms + int(seq * 1000 / self.rate_per_device),
                                        {"v": float(seq)}, seq=seq)
            info = client.publish(topic, payload, qos=1)
            with self._lock:
                self.sent[device_id] += 1
                if info.mid in self._early[device_id]:
                    self._early[device_id].discard(info.mid)
                    self.acked[device_id].add(seq)
                else:
                    self._mids[device_id][info.mid] = seq

    def wait_sent(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def wait_acked(self, timeout_s: float) -> bool:
        """True once every sent reading is acknowledged."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if all(len(self.acked[d]) >= self.sent[d] for d in self.device_ids):
                    return True
            time.sleep(0.1)
        return False

    def acknowledged(self) -> set[tuple[str, int]]:
        with self._lock:
            return {(d, s) for d, seqs in self.acked.items() for s in seqs}

    def close(self) -> None:
        self._stop.set()
        for client in self._clients.values():
            client.disconnect()
            client.loop_stop()

    def end_sessions(self) -> None:
        """Clean-session connects: the broker forgets these devices' sessions."""
        for device_id in self.device_ids:
            client = paho_client(pki.device_paths(self.settings.pki_dir, device_id), device_id,
                                 v5=False, clean=True)
            try:
                client.connect("localhost", self.settings.mqtt_port)
                client.loop_start()
                time.sleep(0.1)
                client.disconnect()
            except OSError:
                pass
            finally:
                client.loop_stop()
