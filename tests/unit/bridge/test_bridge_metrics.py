"""The bridge's per-message counters reach the Prometheus exposition under their names."""

from __future__ import annotations

from prometheus_client import generate_latest

from bridge.metrics import BridgeMetrics
from gateway.contract import Reason


def test_counts_are_exposed_as_counters_and_a_histogram() -> None:
    metrics = BridgeMetrics()
    counts = metrics.counts
    counts.received += 3
    counts.produced += 2
    counts.acked += 3
    counts.dlq[Reason.NOT_JSON] += 1
    counts.observe_latency(0.0005)
    counts.observe_latency(0.004, messages=2)  # two messages of one read
    counts.observe_latency(99.0)
    text = generate_latest(metrics.registry).decode()
    assert "bridge_messages_received_total 3.0" in text
    assert "bridge_messages_produced_total 2.0" in text
    assert "bridge_messages_acked_total 3.0" in text
    assert 'bridge_messages_dlq_total{reason="not_json"} 1.0' in text
    assert 'bridge_messages_dlq_total{reason="unknown_device"} 0.0' in text
    assert 'bridge_publish_to_kafka_seconds_bucket{le="0.001"} 1.0' in text
    assert 'bridge_publish_to_kafka_seconds_bucket{le="0.005"} 3.0' in text
    assert 'bridge_publish_to_kafka_seconds_bucket{le="30.0"} 3.0' in text
    assert 'bridge_publish_to_kafka_seconds_bucket{le="+Inf"} 4.0' in text
    assert "bridge_publish_to_kafka_seconds_count 4.0" in text
