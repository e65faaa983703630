"""Broker restarts lose nothing Mosquitto acknowledged: SIGTERM and kill -9 of a real Mosquitto
while paho devices (MQTT 3.1.1, persistent sessions, QoS 1) publish 50 readings/s and a real bridge
forwards them to Kafka; what Kafka holds is compared with what the devices had acknowledged.

Mosquitto 2.0 restores a persistent session's queue but not its shared subscription. Until a bridge
has subscribed again, the broker refuses device telemetry without acknowledging it (the devices
send it again), so nothing is acknowledged into a subscription that is not there.

A private Mosquitto (its own port and state) is killed here, never the stack's; Kafka and
Cassandra (the registry) are shared. Each run has its own devices, group and topics.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.bridge import (
    BridgeProcess,
    create_topics,
    private_stack,
    provision,
    read_topic,
    reading_id,
)
from stack import process
from stack.config import StackSettings
from stack.services.mosquitto import MosquittoService
from tests.integration.broker_harness import Fleet

pytestmark = pytest.mark.integration

DEVICES = 10
RATE_PER_DEVICE = 5.0  # 50 readings/s: the default emulator's load
SECONDS = 16
FAULT_AT_S = 6.0
# Mosquitto's autosave_interval (mosquitto/mosquitto.conf.tmpl): what a kill -9 can lose while
# the bridge is away is what arrived since the last save.
AUTOSAVE_INTERVAL_S = 10


@pytest.fixture(scope="module")
def edge(
    services: Callable[..., contextlib.AbstractContextManager[StackSettings]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[StackSettings, str]]:
    """(private broker settings, shared Kafka bootstrap)."""
    with services({"cassandra", "kafka"}) as shared, \
            private_stack(tmp_path_factory.mktemp("broker-restart"), {"mosquitto"}) as settings:
        yield settings, f"localhost:{shared.kafka_port}"


def _broker_pid(settings: StackSettings) -> int:
    pid = process.read_pid(MosquittoService(settings).processes()[0])
    assert pid is not None, "the private broker is not running"
    return pid


def _fault(settings: StackSettings, how: str) -> float:
    """SIGTERM (Mosquitto saves its state and exits) or SIGKILL; then start it again. The
    seconds it was away."""
    broker = MosquittoService(settings)
    started = time.monotonic()
    if how == "sigterm":
        assert broker.stop()
    else:
        pid = _broker_pid(settings)
        os.kill(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, 0)  # our child (the runner started it from this process): reap it
        except ChildProcessError:
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
    broker.start()
    broker.wait_ready(30)
    return time.monotonic() - started


def _run(edge: tuple[StackSettings, str], tmp_path: Path, how: str, bridge_up: bool
         ) -> tuple[set[tuple[str, int]], set[tuple[str, int]], int]:
    """(acknowledged to the devices, in Kafka, records in Kafka) of one run with one fault."""
    settings, bootstrap = edge
    run_id = uuid.uuid4().hex[:8]
    device_ids = [f"br{run_id}-{i}" for i in range(DEVICES)]
    provision(settings, device_ids)
    bridge = BridgeProcess(settings, run_id, tmp_path, kafka_bootstrap=bootstrap)
    create_topics(bootstrap, bridge.readings_topic, bridge.dlq_topic)
    bridge.start()  # its persistent session and subscription exist from here on
    fleet = Fleet(settings, device_ids, RATE_PER_DEVICE)
    try:
        fleet.start(int(RATE_PER_DEVICE * SECONDS))
        if not bridge_up:
            time.sleep(1.0)
            assert bridge.terminate() == 0  # its session queues what follows
        time.sleep(FAULT_AT_S)
        away_s = _fault(settings, how)
        print(f"\n{how}: broker away {away_s:.2f}s, bridge {'up' if bridge_up else 'down'}")
        fleet.wait_sent(SECONDS + 30)
        if not bridge_up:
            bridge.start()
        assert fleet.wait_acked(60), "devices still wait for acknowledgements"
        acked = fleet.acknowledged()
        # The topic also carries the bridge's watermark heartbeats: only our devices' readings.
        keys = {d.encode() for d in device_ids}
        records = [r for r in read_topic(bootstrap, bridge.readings_topic, expect=len(acked) + 1,
                                         timeout_s=30,
                                         identity=lambda r: reading_id(r) if r.key in keys else 0)
                   if r.key in keys]
        in_kafka = {(r.key.decode(), int(r.json()["seq"])) for r in records if r.key}  # type: ignore[call-overload]
        print(f"{how}: acknowledged {len(acked)}, in Kafka {len(in_kafka)} distinct of "
              f"{len(records)} records, device disconnects {fleet.disconnects}")
        return acked, in_kafka, len(records)
    finally:
        fleet.close()
        fleet.end_sessions()
        bridge.close()
        print(f"bridge log tail:\n{bridge.log_tail(8)}")


@pytest.mark.parametrize(("how", "bridge_up"), [("sigterm", True), ("kill9", True),
                                                 ("sigterm", False)])
def test_broker_restart_loses_nothing_acknowledged(
    edge: tuple[StackSettings, str], tmp_path: Path, how: str, bridge_up: bool
) -> None:
    acked, in_kafka, _ = _run(edge, tmp_path, how, bridge_up)
    assert len(acked) == DEVICES * int(RATE_PER_DEVICE * SECONDS)
    lost = acked - in_kafka
    assert not lost, f"{len(lost)} acknowledged readings never reached Kafka: {sorted(lost)[:10]}"


def test_kill9_with_the_bridge_away_loses_at_most_one_autosave_interval(
    edge: tuple[StackSettings, str], tmp_path: Path
) -> None:
    """What the broker held only in memory (queued for an absent bridge since its last save) dies
    with it: bounded by autosave_interval x rate. docs/operating.md gives the figures."""
    acked, in_kafka, _ = _run(edge, tmp_path, "kill9", bridge_up=False)
    lost = acked - in_kafka
    bound = (AUTOSAVE_INTERVAL_S + 1) * DEVICES * RATE_PER_DEVICE
    print(f"kill -9, bridge away: lost {len(lost)} of {len(acked)} (bound {bound:.0f})")
    assert len(lost) <= bound
