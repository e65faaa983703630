"""The replicated profile's configuration: nodes, addresses, replication, credentials, profile
choice; rendered without starting anything. The default profile's configuration stays as it was."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from stack import orchestrator, topology
from stack.config import ACTIVE_PROFILE_FILE, StackSettings
from stack.services import all_services, by_name
from stack.services.flink import cluster_config


@pytest.fixture
def replicated(tmp_path: Path) -> StackSettings:
    return StackSettings(stack_dir=tmp_path, profile="replicated")


def _props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_the_profile_is_the_recorded_one_and_lives_in_its_own_directory(tmp_path: Path) -> None:
    assert StackSettings(stack_dir=tmp_path).profile == "default"
    (tmp_path / ACTIVE_PROFILE_FILE).write_text("replicated\n")
    running = StackSettings(stack_dir=tmp_path)
    assert (running.profile, running.stack_dir) == ("replicated", tmp_path / "replicated")
    assert running.base_stack_dir == tmp_path
    # Given the profile's own dir (as the runner hands it to its programs), it stays there.
    child = StackSettings(stack_dir=tmp_path / "replicated", profile="replicated")
    assert child.stack_dir == tmp_path / "replicated"
    assert StackSettings(stack_dir=tmp_path, profile="default").stack_dir == tmp_path


def test_every_replicated_node_is_its_own_service(replicated: StackSettings) -> None:
    names = [s.name for s in all_services(replicated)]
    for name in ("kafka-1", "kafka-2", "kafka-3", "cassandra-1", "cassandra-2", "cassandra-3",
                 "bridge-1", "bridge-2", "writer-1", "writer-2", "query-api", "flink"):
        assert name in names
    assert "kafka" not in names and "console" not in names and "prometheus" not in names
    flink = [p.name for p in by_name(replicated, "flink").processes()]
    assert flink == ["flink-jobmanager", "flink-taskmanager-1", "flink-taskmanager-2"]
    # The second writer waits for the first one's schema migration.
    assert by_name(replicated, "writer-2").stage > by_name(replicated, "writer-1").stage


def test_kafka_brokers_replicate_and_authenticate(replicated: StackSettings) -> None:
    props = _props(by_name(replicated, "kafka-2")._server_properties())  # type: ignore[attr-defined]
    assert props["node.id"] == "2"
    assert props["listeners"] == "SASL_PLAINTEXT://127.0.0.2:9092,CONTROLLER://127.0.0.2:9093"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:9093,2@127.0.0.2:9093,3@127.0.0.3:9093"
    assert props["default.replication.factor"] == props["offsets.topic.replication.factor"] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert props["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    password = topology.kafka_password(replicated, topology.KAFKA_ADMIN_USER)
    assert password in props["listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config"]
    scram = by_name(replicated, "kafka-1")._scram_credentials()  # type: ignore[attr-defined]
    assert scram.count("--add-scram") == 2


def test_the_default_broker_is_unchanged(tmp_path: Path) -> None:
    props = _props(by_name(StackSettings(stack_dir=tmp_path), "kafka")._server_properties())  # type: ignore[attr-defined]
    assert props["listeners"] == "PLAINTEXT://localhost:9092,CONTROLLER://localhost:9093"
    assert "min.insync.replicas" not in props and "sasl.enabled.mechanisms" not in props
    assert props["offsets.topic.replication.factor"] == "1"


def test_cassandra_nodes_are_seeds_with_their_own_tokens(replicated: StackSettings) -> None:
    configs = [json.loads(by_name(replicated, f"cassandra-{n}")._yaml().split("\n", 1)[1])  # type: ignore[attr-defined]
               for n in (1, 2, 3)]
    assert [c["listen_address"] for c in configs] == ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    tokens = [int(c["initial_token"]) for c in configs]
    assert tokens == sorted(tokens) and tokens[0] == -(2**63)
    assert all(c["authenticator"] == "PasswordAuthenticator" and c["auto_bootstrap"] is False
               for c in configs)
    seeds = configs[0]["seed_provider"][0]["parameters"][0]["seeds"]
    assert seeds == "127.0.0.1:7000,127.0.0.2:7000,127.0.0.3:7000"


def test_services_get_the_profiles_addresses_and_credentials(replicated: StackSettings) -> None:
    topology.prepare(replicated)
    env = by_name(replicated, "bridge-2").env()  # type: ignore[attr-defined]
    assert env["IOT_BRIDGE_CLIENT_ID"] == "svc-bridge-2" and env["IOT_BRIDGE_METRICS_PORT"] == "9111"
    assert env["IOT_KAFKA_BOOTSTRAP"] == "localhost:9092,127.0.0.2:9092,127.0.0.3:9092"
    assert env["IOT_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
    assert env["IOT_CASSANDRA_PASSWORD"] == topology.cassandra_password(replicated, "iot_app")
    assert env["IOT_STACK_DIR"] == str(replicated.stack_dir) and env["IOT_PROFILE"] == "replicated"
    secrets = topology.secrets_dir(replicated)
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    for path in [*secrets.iterdir(), replicated.stack_dir / topology.CLIENT_ENV_FILE]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert by_name(replicated, "query-api").processes()[0].argv[-2:] == ["--workers", "2"]


def test_no_credentials_in_the_default_profile(tmp_path: Path) -> None:
    default = StackSettings(stack_dir=tmp_path)
    assert topology.service_env(default) == {}
    assert topology.kafka_client_config(default) == {"bootstrap.servers": "localhost:9092"}
    assert "--workers" not in by_name(default, "query-api").processes()[0].argv


def test_flink_spreads_the_job_over_two_task_managers(replicated: StackSettings) -> None:
    config = cluster_config(replicated)
    assert config["taskmanager.numberOfTaskSlots"] == "2"
    assert config["cluster.evenly-spread-out-slots"] == "true"
    default = StackSettings(stack_dir=replicated.base_stack_dir, profile="default")
    assert "cluster.evenly-spread-out-slots" not in cluster_config(default)


def test_one_profile_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ACTIVE_PROFILE_FILE).write_text("replicated\n")
    from stack.errors import StackError
    from stack.service import Service

    monkeypatch.setattr(Service, "running", lambda self: True)
    with pytest.raises(StackError, match="replicated profile is running"):
        orchestrator._refuse_other_profile(StackSettings(stack_dir=tmp_path, profile="default"))
