"""The replicated profile: the same pipeline, each stage on several nodes, authenticated.

Real MQTT devices (persistent sessions, QoS 1, their own certificates) publish while one node at
a time is killed with SIGKILL and kept down: a Kafka broker, a Cassandra node, a task manager,
a bridge instance. During each fault readings must keep reaching Kafka and 1-minute windows must
keep reaching Cassandra; after it (the node back, as `iot up` brings it), Cassandra's rows and
the query API equal the oracle over the distinct readings sent: nothing lost, nothing counted
twice.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC

import pytest
from cassandra.cluster import NoHostAvailable
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from gateway import cassandra_session, endpoints, topics
from gateway.settings import CassandraConnection
from harness.query_api import password_token
from stack import orchestrator, process, topology
from stack.config import StackSettings
from storage.rows import bucket_month
from tests.e2e import fault_harness as harness
from tests.replicated import kafka_probe

pytestmark = pytest.mark.replicated
log = logging.getLogger(__name__)


def _fleet(stack: StackSettings, name: str, devices: int) -> harness.Run:
    """fault_harness.fleet with the profile's Kafka (SASL) for the start offsets."""
    identities = harness.provision(stack, f"repl-{name}", devices)
    clients = [harness.Device(stack, device_id, identity) for device_id, identity in identities.items()]
    run = harness.Run(stack, name, clients[:-1], clients[-1], start_offsets=kafka_probe.end_offsets(stack))
    deadline = time.monotonic() + 30
    while not all(d.client.is_connected() for d in clients):
        assert time.monotonic() < deadline, "devices did not connect"
        time.sleep(0.1)
    return run


def _close(run: harness.Run) -> None:
    for device in [*run.devices, run.clock]:
        device.close()


def test_topology_and_authentication(replicated: StackSettings) -> None:
    """Three brokers, every topic on all three with min.insync.replicas 2; a client without
    credentials is refused by Kafka and Cassandra, and so is Cassandra's built-in superuser."""
    admin = AdminClient(topology.kafka_client_config(replicated))
    metadata = admin.list_topics(timeout=10)
    assert sorted(metadata.brokers) == [1, 2, 3]
    readings = metadata.topics[topics.KAFKA_READINGS]
    assert all(len(p.replicas) == 3 for p in readings.partitions.values())
    from confluent_kafka.admin._config import ConfigResource

    resource = ConfigResource(ConfigResource.Type.TOPIC, topics.KAFKA_READINGS)
    configs = admin.describe_configs([resource])[resource].result()
    assert configs["min.insync.replicas"].value == "2"

    anonymous = AdminClient({"bootstrap.servers": topology.kafka_bootstrap(replicated),
                             "socket.timeout.ms": 3000, "log_level": 0})
    with pytest.raises(KafkaException):
        anonymous.list_topics(timeout=5)

    app = CassandraConnection()
    session = cassandra_session.connect(app, keyspace=endpoints.CASSANDRA_KEYSPACE)
    try:
        row = session.execute(
            "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
            (endpoints.CASSANDRA_KEYSPACE,),
        ).one()
        assert row.replication["replication_factor"] == "3"
        assert len([h for h in session.cluster.metadata.all_hosts() if h.is_up]) == 3
    finally:
        session.cluster.shutdown()
    for username, password in ((None, None), ("cassandra", "cassandra"),
                               (topology.CASSANDRA_APP_ROLE, "wrong")):
        with pytest.raises(cassandra_session.CassandraUnavailable) as refused:
            cassandra_session.connect(CassandraConnection(
                cassandra_username=username, cassandra_timeout_s=5,
                cassandra_password=SecretStr(password) if password else None))
        assert isinstance(refused.value.__cause__, NoHostAvailable)


def test_readings_flow_to_cassandra_with_authentication(replicated: StackSettings) -> None:
    run = _fleet(replicated, "flow", 6)
    try:
        harness.stream(run, 30, 30.0, [])
        outcome = harness.verify(run, password_token("client1"))
    finally:
        _close(run)
    harness.record(replicated, "replicated-flow", **asdict(outcome))


@dataclass(frozen=True)
class Fault:
    process: str  # the runner's process killed with SIGKILL
    service: str  # what `iot up --only` brings back afterwards
    down_s: float = 75.0  # long enough for a minute window to close and be written meanwhile


FAULTS = {
    # Broker 1 is the contract's bootstrap address: clients must find the others by themselves.
    "kafka-broker": Fault("kafka-1", "kafka-1"),
    "cassandra-node": Fault("cassandra-1", "cassandra-1"),
    "task-manager": Fault("flink-taskmanager-1", "flink"),
    "bridge-instance": Fault("bridge-1", "bridge-1"),
}
# After a node is back, before the next is killed: its replicas catch up, its clients reconnect.
_SETTLE_S = 10.0


def _new_windows(run: harness.Run, since_ms: int) -> list[float]:
    """Freshness (s from window end to the row's first write) of each 1-minute row of the run's
    devices whose window ended after since_ms. Rows are written once (IF NOT EXISTS), so the
    write time is when the row first reached Cassandra."""
    session = cassandra_session.connect(CassandraConnection(), keyspace=endpoints.CASSANDRA_KEYSPACE)
    try:
        freshness: list[float] = []
        for device in run.device_ids:
            for month in {bucket_month(since_ms), bucket_month(int(time.time() * 1000))}:
                rows = session.execute(
                    "SELECT window_end, WRITETIME(count) AS written FROM agg_1m"
                    " WHERE device_id = %s AND bucket_month = %s",
                    (device, month))
                for row in rows:
                    end_ms = row.window_end.replace(tzinfo=UTC).timestamp() * 1000
                    if end_ms > since_ms:
                        freshness.append(round((row.written / 1000 - end_ms) / 1000, 1))
        return freshness
    finally:
        session.cluster.shutdown()


def _fault(stack: StackSettings, run: harness.Run, fault: Fault, during: dict[str, float]) -> None:
    spec = harness.process_spec(stack, fault.process)
    # Before the kill: right after it, a killed broker still leads its partitions for the
    # broker session timeout (seconds), and asking them for offsets would wait on it.
    offsets = kafka_probe.end_offsets(stack)
    assert process.kill(spec), f"{fault.process} was not running"
    killed_ms = int(time.time() * 1000)
    time.sleep(fault.down_s)
    # Still down (nothing restarted it): what flowed meanwhile flowed without it.
    assert not process.is_running(spec), f"{fault.process} came back during the fault"
    during["readings_in_kafka"] = kafka_probe.records_since(stack, offsets, run.device_ids)
    freshness = sorted(_new_windows(run, killed_ms))
    during["windows_in_cassandra"] = len(freshness)
    # Window end -> row, for the windows that closed while the node was down.
    if freshness:
        during["freshness_p99_s"] = freshness[min(len(freshness) - 1, int(len(freshness) * 0.99))]
        during["freshness_max_s"] = freshness[-1]
    log.info("replicated fault %s: %s", fault.process, during)
    orchestrator.up(stack, only={fault.service})


def test_each_node_killed_in_turn_ingestion_goes_on_and_nothing_is_lost(replicated: StackSettings) -> None:
    """One stream of readings, through which a Kafka broker, a Cassandra node, a task manager
    and a bridge instance are killed one after the other, each brought back before the next:
    one oracle over the whole stream afterwards, and for each fault what flowed while it lasted."""
    during: dict[str, dict[str, float]] = {name: {} for name in FAULTS}

    def each_in_turn() -> None:
        for name, fault in FAULTS.items():
            log.info("replicated fault: %s (kill -9 %s)", name, fault.process)
            _fault(replicated, run, fault, during[name])
            time.sleep(_SETTLE_S)

    run = _fleet(replicated, "in-turn", 6)
    started = time.monotonic()
    try:
        harness.stream(run, 0.0, 30.0, [(10.0, each_in_turn)], tail_s=15.0)
        elapsed = time.monotonic() - started
        for name, figures in during.items():
            assert figures.get("readings_in_kafka", 0) > 0, f"{name}: no reading reached Kafka meanwhile"
            assert figures.get("windows_in_cassandra", 0) > 0, f"{name}: no window reached Cassandra then"
        # A fault may delay readings past their windows (counted late, in all-time only).
        outcome = harness.verify(run, password_token("client1"), late_ok=True)
    finally:
        _close(run)
    flat = {f"{name}_{key}": value for name, figures in during.items() for key, value in figures.items()}
    harness.record(replicated, "replicated-in-turn", stream_s=round(elapsed), **flat, **asdict(outcome))
