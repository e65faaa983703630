"""Prometheus metrics of the bridge, in a registry of its own (tests create several bridges)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gateway.contract import Reason

# Publish-to-Kafka latency: the target is p99 < 50 ms, so the buckets are fine below 100 ms.
_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "bridge_messages_received", "MQTT messages received from Mosquitto", registry=r
        )
        self.produced = Counter(
            "bridge_messages_produced", "Valid readings confirmed by Kafka", registry=r
        )
        self.dlq = Counter(
            "bridge_messages_dlq", "Invalid messages confirmed by Kafka on the DLQ, by reason",
            ["reason"], registry=r,
        )
        self.acked = Counter(
            "bridge_messages_acked", "PUBACKs sent to Mosquitto after Kafka confirmed", registry=r
        )
        self.redelivered = Counter(
            "bridge_messages_redelivered", "Messages the broker marked DUP (sent again)", registry=r
        )
        self.delivery_errors = Counter(
            "bridge_kafka_delivery_errors", "Failed Kafka deliveries (retried)", ["error"],
            registry=r,
        )
        self.in_flight = Gauge(
            "bridge_messages_in_flight", "Received, not yet acknowledged to MQTT", registry=r
        )
        self.latency = Histogram(
            "bridge_publish_to_kafka_seconds",
            "From receipt of the MQTT message to Kafka's delivery confirmation",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.mqtt_connected = Gauge(
            "bridge_mqtt_connected", "1 while connected to Mosquitto", registry=r
        )
        self.kafka_up = Gauge("bridge_kafka_up", "0 while all Kafka brokers are down", registry=r)
        self.broker_dropped = Gauge(
            "bridge_mosquitto_dropped_messages",
            "Mosquitto's $SYS/broker/publish/messages/dropped (must stay 0)", registry=r,
        )
        self.broker_dropped.set(float("nan"))  # unknown until $SYS publishes it
        for reason in Reason:
            self.dlq.labels(reason=reason.value)
