"""MQTT and Kafka topic names (docs/contract.md "Telemetry message", "Kafka topics")."""

from __future__ import annotations

import re

MQTT_TELEMETRY_TEMPLATE = "devices/{device_id}/telemetry"
MQTT_TELEMETRY_FILTER = "devices/+/telemetry"
MQTT_SHARED_GROUP = "bridge"
MQTT_BRIDGE_SUBSCRIPTION = f"$share/{MQTT_SHARED_GROUP}/{MQTT_TELEMETRY_FILTER}"
MQTT_OPERATOR_FILTER = "devices/#"

KAFKA_READINGS = "iot.readings"
KAFKA_READINGS_PARTITIONS = 6
KAFKA_DLQ = "iot.readings.dlq"
# Flink's output, consumed by the Cassandra writer (storage/); an extension of the contract.
KAFKA_AGG_1M = "iot.aggregates.1m"
KAFKA_AGG_1H = "iot.aggregates.1h"
KAFKA_AGG_ALL = "iot.aggregates.all"

_TELEMETRY_TOPIC = re.compile(r"devices/([^/]+)/telemetry")  # fullmatch: no "...telemetry\n"


def telemetry_topic(device_id: str) -> str:
    return MQTT_TELEMETRY_TEMPLATE.format(device_id=device_id)


def device_id_from_topic(topic: str) -> str | None:
    """The device id segment of a telemetry topic, unvalidated; None if the topic has another shape."""
    match = _TELEMETRY_TOPIC.fullmatch(topic)
    return match.group(1) if match else None
