"""Connection settings every stage shares, defined once: mix them into a service's settings class.

Each field reads one environment variable whatever the class's own prefix (IOT_KAFKA_BOOTSTRAP,
IOT_CASSANDRA_HOSTS, IOT_STACK_DIR, ...), so the aggregation job (prefix IOT_FLINK_) and the
bridge (prefix IOT_) see the same Kafka and the same Cassandra. Keyword arguments take the field
names (`BridgeSettings(kafka_bootstrap=...)`).

    class WriterSettings(KafkaConnection, CassandraConnection):
        model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway import endpoints

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_STACK_DIR = REPO_ROOT / ".stack"

# librdkafka values are scalars, save `logger` (a logging.Logger) and callbacks.
KafkaConfig = dict[str, Any]
Consistency = Literal[
    "ANY", "ONE", "TWO", "THREE", "QUORUM", "ALL", "LOCAL_QUORUM", "EACH_QUORUM", "LOCAL_ONE"
]

_SHARED = SettingsConfigDict(extra="ignore", populate_by_name=True)


class StackDirSettings(BaseSettings):
    """Where the local stack keeps its state (certificates, logs, checkpoints)."""

    model_config = _SHARED

    stack_dir: Path = Field(default=DEFAULT_STACK_DIR, validation_alias="IOT_STACK_DIR")

    @property
    def pki_dir(self) -> Path:
        return self.stack_dir / "pki"


class KafkaConnection(BaseSettings):
    """How a client reaches Kafka; `kafka_client_config` turns it into librdkafka settings."""

    model_config = _SHARED

    kafka_bootstrap: str = Field(default=endpoints.KAFKA_BOOTSTRAP, validation_alias="IOT_KAFKA_BOOTSTRAP")
    # PLAINTEXT on the local stack; SASL_SSL (with a mechanism and credentials) on a secured cluster.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT", validation_alias="IOT_KAFKA_SECURITY_PROTOCOL"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, validation_alias="IOT_KAFKA_SASL_MECHANISM"
    )
    kafka_sasl_username: str | None = Field(default=None, validation_alias="IOT_KAFKA_SASL_USERNAME")
    kafka_sasl_password: SecretStr | None = Field(default=None, validation_alias="IOT_KAFKA_SASL_PASSWORD")
    # A CA bundle for SSL / SASL_SSL; unset, the system's.
    kafka_ssl_ca_file: Path | None = Field(default=None, validation_alias="IOT_KAFKA_SSL_CA_FILE")

    def kafka_client_config(self, extra: Mapping[str, Any] | None = None) -> KafkaConfig:
        """librdkafka settings for a Producer, Consumer or AdminClient, plus the client's own."""
        config: KafkaConfig = {
            "bootstrap.servers": self.kafka_bootstrap,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism is not None:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username is not None:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if self.kafka_ssl_ca_file is not None:
            config["ssl.ca.location"] = str(self.kafka_ssl_ca_file)
        config.update(extra or {})
        return config


class CassandraConnection(BaseSettings):
    """How a client reaches Cassandra; gateway.cassandra opens the session from it."""

    model_config = _SHARED

    # Contact points, comma-separated; the driver discovers the rest of the ring from them.
    cassandra_hosts: str = Field(default=endpoints.CASSANDRA_HOSTS, validation_alias="IOT_CASSANDRA_HOSTS")
    cassandra_port: int = Field(default=endpoints.CASSANDRA_PORT, validation_alias="IOT_CASSANDRA_PORT")
    cassandra_keyspace: str = Field(
        default=endpoints.CASSANDRA_KEYSPACE, validation_alias="IOT_CASSANDRA_KEYSPACE"
    )
    # None: the driver takes the data centre of the first contact point.
    cassandra_local_dc: str | None = Field(default=None, validation_alias="IOT_CASSANDRA_LOCAL_DC")
    cassandra_username: str | None = Field(default=None, validation_alias="IOT_CASSANDRA_USERNAME")
    cassandra_password: SecretStr | None = Field(default=None, validation_alias="IOT_CASSANDRA_PASSWORD")
    # LOCAL_QUORUM: a read sees every acknowledged write while one replica of three is down; on
    # the single local node (replication 1) it is the same as ONE.
    cassandra_consistency: Consistency = Field(
        default="LOCAL_QUORUM", validation_alias="IOT_CASSANDRA_CONSISTENCY"
    )
    cassandra_timeout_s: float = Field(default=10.0, gt=0, validation_alias="IOT_CASSANDRA_TIMEOUT_S")
    # v5 frames every message in CRC-checked segments that cassandra-driver computes in pure
    # Python (a tenth of the query API's CPU in a profile); v4 carries the same statements
    # without them.
    cassandra_protocol_version: int = Field(
        default=4, ge=3, le=5, validation_alias="IOT_CASSANDRA_PROTOCOL_VERSION"
    )

    @property
    def cassandra_contact_points(self) -> list[str]:
        return [host.strip() for host in self.cassandra_hosts.split(",") if host.strip()]


class MqttConnection(BaseSettings):
    """Where a client reaches Mosquitto's TLS listener (devices, the bridge)."""

    model_config = _SHARED

    mqtt_host: str = Field(default=endpoints.HOST, validation_alias="IOT_MQTT_HOST")
    mqtt_port: int = Field(default=endpoints.MQTT_TLS_PORT, validation_alias="IOT_MQTT_PORT")


class KeycloakConnection(BaseSettings):
    """Where a service reaches Keycloak and the realm whose tokens it takes."""

    model_config = _SHARED

    keycloak_url: str = Field(default=endpoints.KEYCLOAK_URL, validation_alias="IOT_KEYCLOAK_URL")
    keycloak_realm: str = Field(default=endpoints.KEYCLOAK_REALM, validation_alias="IOT_KEYCLOAK_REALM")

    @property
    def realm_url(self) -> str:
        return f"{self.keycloak_url.rstrip('/')}/realms/{self.keycloak_realm}"
