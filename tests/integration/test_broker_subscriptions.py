"""Hostile devices cannot starve the bridge: a device that subscribes to the bridge's shared
group (or to `devices/#`, `#`) is refused with a SUBACK failure code, and the bridge still gets
every reading into Kafka.

Mosquitto 2.0 with acl_file granted such a SUBSCRIBE, dealt the device its share of the group's
messages and dropped them at delivery (the ACL forbids the read): with three hostile devices the
bridge received 25 of 100 acknowledged readings. Real Mosquitto, bridge (`python -m bridge`),
Kafka and Cassandra (the registry); the run's own devices, group and topics.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway import pki, topics
from gateway.contract import telemetry_payload
from harness.bridge import (
    BridgeProcess,
    KafkaRecord,
    create_topics,
    provision,
    publish,
    read_topic,
    reading_id,
)
from stack.config import StackSettings
from tests.integration.broker_harness import group_subscription, paho_client

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    services: Callable[..., contextlib.AbstractContextManager[StackSettings]],
) -> Iterator[StackSettings]:
    with services({"mosquitto", "kafka", "cassandra"}) as settings:
        yield settings


class Hostile:
    """A device holding subscriptions open (persistent session) for the whole run."""

    def __init__(self, settings: StackSettings, identity: pki.Identity, filters: list[str]):
        self.codes: list[int] = []
        self.received = 0
        self._subscribed = threading.Event()
        self.client = paho_client(identity, "", v5=True)
        self.client.on_connect = self._on_connect(filters)
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("localhost", settings.mqtt_port, clean_start=True)
        self.client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK"

    def _on_connect(self, filters: list[str]):  # type: ignore[no-untyped-def]
        def on_connect(c: mqtt.Client, u: object, f: object, rc: object, p: object) -> None:
            c.subscribe([(f_, 1) for f_ in filters])
        return on_connect

    def _on_subscribe(self, c: mqtt.Client, u: object, mid: int, rcs: list[ReasonCode],
                      p: Properties | None) -> None:
        self.codes = [rc.value for rc in rcs]
        self._subscribed.set()

    def _on_message(self, c: mqtt.Client, u: object, m: mqtt.MQTTMessage) -> None:
        self.received += 1

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_hostile_subscribers_neither_join_nor_starve_the_bridge(
    stack: StackSettings, tmp_path: Path
) -> None:
    run_id = uuid.uuid4().hex[:8]
    bridge = BridgeProcess(stack, run_id, tmp_path)
    create_topics(bridge.kafka_bootstrap, bridge.readings_topic, bridge.dlq_topic)
    bridge.start()
    devices = [f"hs{run_id}-{i}" for i in range(4)]
    provision(stack, devices)
    filters = [group_subscription(bridge.group), topics.MQTT_BRIDGE_SUBSCRIPTION,
               topics.MQTT_OPERATOR_FILTER, "#"]
    hostile = [Hostile(stack, pki.device_paths(stack.pki_dir, d), filters) for d in devices[1:]]
    try:
        for each in hostile:
            assert each.codes == [0x87] * len(filters), each.codes
        ts = int(time.time() * 1000)
        plan = {devices[0]: [telemetry_payload(ts + i, {"v": float(i)}, seq=i) for i in range(100)]}
        stats = publish(stack, plan)
        assert stats.acked == 100
        # The topic also carries the bridge's watermark heartbeats: count this device's readings.
        key = devices[0].encode()

        def identity(record: KafkaRecord) -> object:
            return reading_id(record) if record.key == key else "other"

        records = read_topic(bridge.kafka_bootstrap, bridge.readings_topic, expect=101,
                             timeout_s=20, identity=identity)
        assert len({reading_id(r) for r in records if r.key == key}) == 100
        assert sum(each.received for each in hostile) == 0
    finally:
        for each in hostile:
            each.close()
        bridge.close()
