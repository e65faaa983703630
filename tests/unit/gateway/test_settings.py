"""The shared connection settings: one variable each whatever the class's prefix, credentials
kept secret, and the librdkafka configuration built from them."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from bridge.config import BridgeSettings
from flink_jobs.config import FlinkJobSettings
from gateway.cassandra_session import build_cluster
from gateway.settings import CassandraConnection, KafkaConnection
from query_api.config import QueryApiSettings
from storage.config import StorageSettings


def test_one_variable_reaches_every_stage(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IOT_KAFKA_BOOTSTRAP", "k1:9092,k2:9092")
    monkeypatch.setenv("IOT_CASSANDRA_HOSTS", "c1, c2")
    monkeypatch.setenv("IOT_STACK_DIR", str(tmp_path))
    for cls in (BridgeSettings, StorageSettings, FlinkJobSettings):
        assert cls().kafka_bootstrap == "k1:9092,k2:9092", cls.__name__
    for cassandra in (BridgeSettings(), StorageSettings(), QueryApiSettings()):
        assert cassandra.cassandra_contact_points == ["c1", "c2"]
    # The job's own prefix is IOT_FLINK_; its state still follows IOT_STACK_DIR.
    assert FlinkJobSettings().checkpoint_dir == tmp_path / "flink" / "checkpoints"
    assert BridgeSettings().ca_file == tmp_path / "pki" / "ca.crt"


def test_sasl_settings_make_the_client_config_and_stay_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("IOT_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("IOT_KAFKA_SASL_USERNAME", "iot-app")
    monkeypatch.setenv("IOT_KAFKA_SASL_PASSWORD", "s3cret")
    settings = BridgeSettings()
    config = settings.producer_config()
    assert config["security.protocol"] == "SASL_SSL"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert (config["sasl.username"], config["sasl.password"]) == ("iot-app", "s3cret")
    assert config["acks"] == "all"
    assert "s3cret" not in settings.model_dump_json()


def test_the_local_stack_needs_no_credentials() -> None:
    plain = KafkaConnection(kafka_bootstrap="k:1").kafka_client_config({"group.id": "g"})
    assert plain == {"bootstrap.servers": "k:1", "security.protocol": "PLAINTEXT", "group.id": "g"}


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOT_CASSANDRA_CONSISTENCY", "MOSTLY")
    with pytest.raises(ValidationError):
        CassandraConnection()
    monkeypatch.delenv("IOT_CASSANDRA_CONSISTENCY")
    monkeypatch.setenv("IOT_KAFKA_SECURITY_PROTOCOL", "TELNET")
    with pytest.raises(ValidationError):
        KafkaConnection()


def test_the_cluster_carries_credentials_consistency_and_dc() -> None:
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT

    settings = CassandraConnection(
        cassandra_hosts="127.0.0.1,127.0.0.2", cassandra_port=9142, cassandra_local_dc="dc1",
        cassandra_username="iot", cassandra_password=SecretStr("pw"), cassandra_consistency="LOCAL_QUORUM",
    )
    cluster = build_cluster(settings, timeout_s=3.0)
    try:
        assert cluster.contact_points == ["127.0.0.1", "127.0.0.2"] and cluster.port == 9142
        assert isinstance(cluster.auth_provider, PlainTextAuthProvider)
        profile = cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT]
        assert profile.consistency_level == ConsistencyLevel.LOCAL_QUORUM
        assert profile.request_timeout == 3.0
        assert cluster.protocol_version == 4
    finally:
        cluster.shutdown()


def test_a_cluster_may_keep_to_its_contact_points_and_connect_sooner() -> None:
    from cassandra.cluster import EXEC_PROFILE_DEFAULT
    from cassandra.policies import TokenAwarePolicy, WhiteListRoundRobinPolicy

    settings = CassandraConnection(cassandra_hosts="127.0.0.3")
    pinned = build_cluster(settings, timeout_s=9.0, connect_timeout_s=1.5, contact_points_only=True)
    usual = build_cluster(settings, timeout_s=9.0)
    try:
        policy = pinned.profile_manager.profiles[EXEC_PROFILE_DEFAULT].load_balancing_policy
        assert isinstance(policy, WhiteListRoundRobinPolicy)
        assert pinned.connect_timeout == pinned.control_connection_timeout == 1.5
        assert usual.connect_timeout == 9.0
        assert isinstance(usual.profile_manager.profiles[EXEC_PROFILE_DEFAULT].load_balancing_policy,
                          TokenAwarePolicy)
    finally:
        pinned.shutdown()
        usual.shutdown()
