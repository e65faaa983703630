"""Prometheus metrics of the bridge, in a registry of its own (tests create several bridges).

The per-message figures (received, produced, DLQ, acked, latency) are plain integers that one
thread each writes and a collector reads at scrape time: prometheus_client's own counters take
a lock on every increment, which was a tenth of the bridge's CPU at 10,000 messages/s.
Writers: `received` the event loop; `produced`, `dlq`, `latency` whichever thread serves
librdkafka's delivery reports (the event loop, or the flushing thread once the loop has stopped
serving them); `acked` the tracker, under its lock.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.contract import Reason

# Publish-to-Kafka latency: the target is p99 < 50 ms, so the buckets are fine below 100 ms.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0,
)


class MessageCounts:
    """The hot counters; attributes are incremented in place by their single writer."""

    def __init__(self) -> None:
        self.received = 0
        self.produced = 0
        self.acked = 0
        self.redelivered = 0
        self.dropped = 0  # neither readings nor dead letters: Kafka refused even the DLQ record
        self.dlq = dict.fromkeys(Reason, 0)
        # One slot per bucket upper bound, plus +Inf; not cumulative (that is done at scrape).
        self.latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.latency_sum = 0.0

    def observe_latency(self, seconds: float, messages: int = 1) -> None:
        """`messages` that each took `seconds` (a read's messages share their receipt time)."""
        self.latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += messages
        self.latency_sum += seconds * messages


class _CountsCollector(Collector):
    def __init__(self, counts: MessageCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        c = self._counts
        yield CounterMetricFamily(
            "bridge_messages_received", "MQTT messages received from Mosquitto", value=c.received
        )
        yield CounterMetricFamily(
            "bridge_messages_produced", "Valid readings confirmed by Kafka", value=c.produced
        )
        dlq = CounterMetricFamily(
            "bridge_messages_dlq", "Invalid messages confirmed by Kafka on the DLQ, by reason",
            labels=["reason"],
        )
        for reason, count in list(c.dlq.items()):
            dlq.add_metric([reason.value], count)
        yield dlq
        yield CounterMetricFamily(
            "bridge_messages_acked", "PUBACKs sent to Mosquitto after Kafka confirmed",
            value=c.acked,
        )
        yield CounterMetricFamily(
            "bridge_messages_redelivered", "Messages the broker marked DUP (sent again)",
            value=c.redelivered,
        )
        yield CounterMetricFamily(
            "bridge_messages_dropped",
            "Messages acknowledged without a Kafka record (Kafka refused even the dead letter)",
            value=c.dropped,
        )
        cumulative, buckets = 0, []
        for upper, count in zip((*LATENCY_BUCKETS, float("inf")), list(c.latency_counts), strict=True):
            cumulative += count
            buckets.append((_le(upper), cumulative))
        yield HistogramMetricFamily(
            "bridge_publish_to_kafka_seconds",
            "From receipt of the MQTT message to Kafka's delivery confirmation",
            buckets=buckets, sum_value=c.latency_sum,
        )


def _le(upper: float) -> str:
    return "+Inf" if upper == float("inf") else repr(upper)


class BridgeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.counts = MessageCounts()
        r.register(_CountsCollector(self.counts))
        self.delivery_errors = Counter(
            "bridge_kafka_delivery_errors", "Failed Kafka deliveries (retried)", ["error"],
            registry=r,
        )
        self.in_flight = Gauge(
            "bridge_messages_in_flight", "Received, not yet acknowledged to MQTT", registry=r
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
        self.mqtt_disconnects = Counter(
            "bridge_mqtt_disconnects", "Connections to Mosquitto that ended, by cause", ["cause"],
            registry=r,
        )
        self.mqtt_sessions_lost = Counter(
            "bridge_mqtt_sessions_lost",
            "Reconnects on which Mosquitto no longer had the bridge's session (its queue is gone)",
            registry=r,
        )
