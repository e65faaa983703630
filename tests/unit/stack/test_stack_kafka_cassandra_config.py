"""The rendered Kafka and Cassandra configurations (no services started)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from gateway import topics
from stack.config import StackSettings
from stack.services.cassandra import CassandraService
from stack.services.kafka import TOPICS, KafkaService, new_cluster_id


def _settings(tmp_path: Path) -> StackSettings:
    return StackSettings(
        stack_dir=tmp_path / "stack", kafka_port=19092, kafka_controller_port=19093,
        cassandra_port=19042, cassandra_storage_port=17000,
    )


@pytest.mark.parametrize("value", ["384m -XX:OnOutOfMemoryError=sh", "-Xmx1g", "1g\n", "0m", "384", "m", ""])
def test_a_heap_is_a_size_and_nothing_else(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    # The heaps reach the JVMs' command lines: anything but a size is refused before a start.
    monkeypatch.setenv("IOT_KAFKA_HEAP", value)
    with pytest.raises(ValueError, match="kafka_heap"):
        _settings(tmp_path)
    monkeypatch.setenv("IOT_KAFKA_HEAP", "512M")
    assert _settings(tmp_path).kafka_heap == "512M"


def test_kafka_properties_single_node_kraft_on_localhost(tmp_path: Path) -> None:
    service = KafkaService(_settings(tmp_path))
    lines = service._server_properties().splitlines()
    props = dict(line.split("=", 1) for line in lines if not line.startswith("#"))
    assert props["process.roles"] == "broker,controller"
    assert props["listeners"] == "PLAINTEXT://localhost:19092,CONTROLLER://localhost:19093"
    assert props["controller.quorum.voters"] == "1@localhost:19093"
    assert Path(props["log.dirs"]).is_relative_to(tmp_path / "stack" / "kafka")
    assert props["transaction.state.log.min.isr"] == "1"


def test_kafka_argv_uses_the_settings_heap(tmp_path: Path) -> None:
    settings = _settings(tmp_path).model_copy(update={"kafka_heap": "300m"})
    argv = KafkaService(settings).processes()[0].argv
    assert "-Xmx300m" in argv and "-Xms300m" in argv
    assert argv[-2:] == ["kafka.Kafka", str(tmp_path / "stack" / "kafka" / "server.properties")]


def test_kafka_topics_of_the_pipeline() -> None:
    by_name = {name: (partitions, config) for name, partitions, config in TOPICS}
    assert by_name[topics.KAFKA_READINGS][0] == topics.KAFKA_READINGS_PARTITIONS
    assert by_name[topics.KAFKA_AGG_ALL][1] == {"cleanup.policy": "compact"}
    assert set(by_name) >= {topics.KAFKA_DLQ, topics.KAFKA_AGG_1M, topics.KAFKA_AGG_1H}


def test_cassandra_yaml_ports_and_dirs(tmp_path: Path) -> None:
    service = CassandraService(_settings(tmp_path))
    text = service._yaml()
    config = json.loads(text.split("\n", 1)[1])  # after the comment line; JSON is valid YAML
    assert config["native_transport_port"] == 19042
    assert config["storage_port"] == 17000
    assert config["listen_address"] == config["rpc_address"] == "127.0.0.1"
    home = tmp_path / "stack" / "cassandra"
    for key in ("commitlog_directory", "saved_caches_directory", "hints_directory"):
        assert Path(config[key]).is_relative_to(home)
    assert config["authenticator"] == "AllowAllAuthenticator"


def test_cassandra_argv_has_java17_module_options(tmp_path: Path) -> None:
    argv = CassandraService(_settings(tmp_path)).processes()[0].argv
    assert "--add-opens=java.base/java.nio=ALL-UNNAMED" in argv
    assert "-Dcassandra.skip_wait_for_gossip_to_settle=0" in argv
    assert argv[-1] == "org.apache.cassandra.service.CassandraDaemon"


def test_a_cluster_id_never_starts_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    # 0xF8 encodes to '-' first: the storage tool would read "--cluster-id -..." as an option.
    ids = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x01" + bytes(15))])
    monkeypatch.setattr(uuid, "uuid4", lambda: next(ids))
    assert new_cluster_id() == "AQAAAAAAAAAAAAAAAAAAAA"


class _BusySession:
    """Times out `busy` times, then answers; records what it was asked."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.calls: list[tuple[str, object, float]] = []

    def execute(self, cql: str, params: object = None, timeout: float = 0.0) -> None:
        from cassandra import OperationTimedOut

        self.calls.append((cql, params, timeout))
        if len(self.calls) <= self.busy:
            raise OperationTimedOut({"127.0.0.1:9042": "Connection defunct by heartbeat"})


def test_a_schema_statement_is_stated_again_while_the_cluster_is_busy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stack.services import cassandra

    monkeypatch.setattr("stack.services.cassandra.time.sleep", lambda _s: None)
    session = _BusySession(busy=2)
    cassandra._execute_patiently(session, "CREATE ROLE r WITH PASSWORD = %s", ("secret",))
    assert len(session.calls) == 3
    assert all(call == session.calls[0] for call in session.calls)
    assert session.calls[0][2] == cassandra._SCHEMA_REQUEST_TIMEOUT_S


def test_a_schema_statement_gives_up_after_its_patience_without_naming_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from stack.errors import StackError
    from stack.services import cassandra

    monkeypatch.setattr("stack.services.cassandra.time.sleep", lambda _s: None)
    monkeypatch.setattr(cassandra, "_SCHEMA_PATIENCE_S", -1.0)
    with pytest.raises(StackError, match="CREATE ROLE r still failing") as failure:
        cassandra._execute_patiently(
            _BusySession(busy=99), "CREATE ROLE r WITH PASSWORD = %s", ("secret",))
    assert "secret" not in str(failure.value)


def test_the_runner_opens_cassandra_through_the_one_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node probed alone, v5, the role's credentials, a 10 s request and a short connect
    timeout, whatever IOT_CASSANDRA_* the caller's environment holds."""
    from cassandra import ProtocolVersion
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT
    from cassandra.policies import WhiteListRoundRobinPolicy

    monkeypatch.setenv("IOT_CASSANDRA_HOSTS", "elsewhere")
    monkeypatch.setenv("IOT_CASSANDRA_PROTOCOL_VERSION", "4")
    service = CassandraService(_settings(tmp_path))
    probe = service._cluster(("iot_admin", "pw"), own_node=True)
    plain = service._cluster()
    try:
        assert probe.contact_points == ["127.0.0.1"] and probe.port == 19042
        assert probe.protocol_version == ProtocolVersion.V5
        assert isinstance(probe.auth_provider, PlainTextAuthProvider) and plain.auth_provider is None
        profile = probe.profile_manager.profiles[EXEC_PROFILE_DEFAULT]
        assert isinstance(profile.load_balancing_policy, WhiteListRoundRobinPolicy)
        assert profile.request_timeout == 10.0 and probe.connect_timeout == 2.0
        balancing = plain.profile_manager.profiles[EXEC_PROFILE_DEFAULT].load_balancing_policy
        assert not isinstance(balancing, WhiteListRoundRobinPolicy)
    finally:
        probe.shutdown()
        plain.shutdown()
    node = CassandraService(_settings(tmp_path), 2)._cluster()
    try:
        assert node.contact_points == ["127.0.0.2"] and node.connect_timeout == 5.0
    finally:
        node.shutdown()
