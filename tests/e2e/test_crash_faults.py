"""Nothing lost, nothing counted twice, through the crash of any component.

Real devices (persistent sessions, QoS 1, their own certificates) stream readings; one component
is killed mid-stream (SIGKILL, or SIGTERM for a graceful broker restart) and brought back as
`iot up` does; then Cassandra's 1m, 1h and all-time rows and the query API must equal the oracle
over the distinct readings sent. Killing the bridge at >= 1,000 readings/s must put duplicates
into Kafka (what Kafka had but the broker had not seen acknowledged is redelivered) and none into
the aggregates.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import pytest

from harness.query_api import password_token
from stack import orchestrator, process
from stack.config import StackSettings
from tests.e2e import fault_harness as harness

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Fault:
    process: str  # the runner's process name (its pid file)
    services: frozenset[str]  # what `iot up` starts to bring it back
    signal: str = "kill"  # kill (SIGKILL) or term (a graceful stop)
    rate: float = 50.0  # readings/s over all devices
    devices: int = 10
    seconds: float = 40.0
    at_s: float = 12.0
    down_s: float = 3.0
    # Killed this many times, `between_s` after each comeback. A kill -9 of the bridge makes
    # copies only when it hits while Kafka holds records the broker has not yet seen
    # acknowledged, a window of milliseconds: one kill misses it now and then.
    kills: int = 1
    between_s: float = 4.0
    late_ok: bool = False  # see fault_harness.verify


FAULTS = {
    "bridge-kill9-1000rps": Fault("bridge", frozenset({"bridge"}), rate=1000.0, devices=20,
                                  at_s=8.0, kills=3),
    "mosquitto-kill9": Fault("mosquitto", frozenset({"mosquitto"}), late_ok=True),
    "mosquitto-sigterm": Fault("mosquitto", frozenset({"mosquitto"}), signal="term", late_ok=True),
    "kafka-kill9": Fault("kafka", frozenset({"kafka"})),
    "cassandra-kill9": Fault("cassandra", frozenset({"cassandra"})),
    "writer-kill9": Fault("writer", frozenset({"writer"})),
    "taskmanager-kill9": Fault("flink-taskmanager", frozenset({"flink"})),
    "jobmanager-kill9": Fault("flink-jobmanager", frozenset({"flink", "flink-job"})),
}


@pytest.fixture(scope="module")
def stack(services: Any) -> Iterator[StackSettings]:
    with services(harness.SERVICES) as settings:
        yield settings


def _down_and_up(stack: StackSettings, fault: Fault) -> None:
    """Kill or stop the process on purpose (the supervisor leaves it alone), then `iot up`;
    as many times as the fault says."""
    spec = harness.process_spec(stack, fault.process)
    for attempt in range(fault.kills):
        if attempt:
            time.sleep(fault.between_s)
        stopped = process.kill(spec) if fault.signal == "kill" else process.stop(spec)
        assert stopped, f"{fault.process} was not running"
        time.sleep(fault.down_s)
        orchestrator.up(stack, only=set(fault.services))


@pytest.mark.parametrize("name", list(FAULTS))
def test_a_crash_loses_nothing_and_counts_nothing_twice(stack: StackSettings, name: str) -> None:
    fault = FAULTS[name]
    with harness.fleet(stack, name, fault.devices) as run:
        harness.stream(run, fault.seconds, fault.rate,
                       [(fault.at_s, lambda: _down_and_up(stack, fault))])
        copies = harness.kafka_copies(run) if fault.process == "bridge" else None
        outcome = harness.verify(run, password_token("client1"), late_ok=fault.late_ok)
    duplicates = sum(n - 1 for n in copies.values()) if copies is not None else None
    harness.record(stack, name, duplicates_in_kafka=duplicates, **asdict(outcome))
    if copies is not None:
        # Every reading is distinct by (device, seq); two of one device may share a ts.
        assert len(copies) == len(run.sent), "readings missing from Kafka"
        assert duplicates, "no reading reached Kafka twice: the bridge kill did not exercise redelivery"
