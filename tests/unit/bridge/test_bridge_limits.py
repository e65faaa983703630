"""The size limits of broker, bridge and Kafka agree: whatever Mosquitto accepts from a device
reaches the bridge and fits a Kafka record, as a reading or as a dead letter (no services)."""

from __future__ import annotations

import re

from bridge.config import BridgeSettings
from bridge.forwarder import Forwarder, Token
from bridge.kafka_sink import Headers
from bridge.metrics import BridgeMetrics
from bridge.tracker import AckTracker
from gateway.contract import (
    KAFKA_MAX_MESSAGE_BYTES,
    MAX_METRICS,
    MAX_PAYLOAD_BYTES,
    MQTT_MAX_PACKET_BYTES,
    Reading,
)
from gateway.settings import REPO_ROOT
from gateway.topics import KAFKA_DLQ, KAFKA_READINGS
from stack.services.kafka import TOPICS


def test_mosquitto_takes_packets_up_to_the_contracts_mqtt_limit() -> None:
    template = (REPO_ROOT / "mosquitto" / "mosquitto.conf.tmpl").read_text()
    [value] = re.findall(r"^max_packet_size (\d+)$", template, re.MULTILINE)
    assert int(value) == MQTT_MAX_PACKET_BYTES


def test_the_bridge_accepts_what_mosquitto_forwards() -> None:
    settings = BridgeSettings()
    # The broker forwards a device's packet with a few more MQTT 5 bytes (property length).
    assert settings.bridge_max_packet_bytes >= MQTT_MAX_PACKET_BYTES + 16


def test_kafka_topics_and_producer_share_one_record_limit() -> None:
    limits = {name: config.get("max.message.bytes") for name, _, config in TOPICS}
    assert limits[KAFKA_READINGS] == limits[KAFKA_DLQ] == str(KAFKA_MAX_MESSAGE_BYTES)
    assert BridgeSettings().producer_config()["message.max.bytes"] == KAFKA_MAX_MESSAGE_BYTES


class SizeSink:
    def __init__(self) -> None:
        self.sizes: list[int] = []

    def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers | None,
                token: Token) -> None:
        pairs = headers.items() if isinstance(headers, dict) else (headers or [])
        size = len(value) + len(key or b"") + sum(len(k) + len(v or b"") for k, v in pairs)
        self.sizes.append(size + len(topic))


class NoTenants:
    def tenant_of(self, device_id: str) -> str | None:
        return None

    def cached(self, device_id: str) -> str | None:
        return None

    def needs_lookup(self, device_id: str) -> bool:
        return False


def test_the_largest_dead_letter_fits_a_kafka_record() -> None:
    sink = SizeSink()
    forwarder = Forwarder(sink, NoTenants(), BridgeMetrics(), KAFKA_READINGS, KAFKA_DLQ)
    topic = "devices/" + "d" * 65_000 + "/telemetry"  # the longest topic MQTT allows, nearly
    packet_payload = b"x" * MQTT_MAX_PACKET_BYTES
    forwarder.handle(AckTracker(lambda ids: None), [
        (topic, packet_payload, 1, False),
        ("devices/d/telemetry", b"{" * MAX_PAYLOAD_BYTES, 2, False),  # within the limit: kept whole
    ])
    assert len(sink.sizes) == 2
    assert max(sink.sizes) < MAX_PAYLOAD_BYTES + 4096 < KAFKA_MAX_MESSAGE_BYTES


def test_the_largest_reading_fits_a_kafka_record() -> None:
    metrics = {f"{i:02d}" + "m" * 62: -1.7976931348623157e308 for i in range(MAX_METRICS)}
    reading = Reading("d" * 64, -(2**63), metrics, 2**63 - 1)
    assert len(reading.to_kafka_value("t" * 63, 2**63 - 1)) < KAFKA_MAX_MESSAGE_BYTES // 100
