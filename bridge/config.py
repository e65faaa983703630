"""The bridge's settings: one typed class, environment prefix IOT_ (IOT_MQTT_PORT, ...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from gateway import contract, endpoints, pki, topics
from gateway.settings import (
    CassandraConnection,
    KafkaConfig,
    KafkaConnection,
    MqttConnection,
    StackDirSettings,
)


class BridgeSettings(StackDirSettings, MqttConnection, KafkaConnection, CassandraConnection):
    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    # This instance's identity: its certificate's CN, which the broker also makes its MQTT client
    # id (the persistent session and its queue live under it). One per instance: svc-bridge-1,
    # svc-bridge-2, ... (gateway.pki.bridge_identity issues them).
    bridge_client_id: str = pki.BRIDGE_CN
    # Instances of one product share this group; the broker lets only bridge identities join it.
    bridge_subscription: str = topics.MQTT_BRIDGE_SUBSCRIPTION
    # Unset: derived from stack_dir (pki/ca.crt, pki/services/<bridge_client_id>.{crt,key}).
    bridge_ca_file: Path | None = None
    bridge_cert_file: Path | None = None
    bridge_key_file: Path | None = None
    # How long Mosquitto keeps the session (and queues for it) after the bridge disconnects.
    bridge_session_expiry_s: int = 7 * 24 * 3600
    # MQTT 5 Receive Maximum: unacknowledged messages the broker may send us. This is the bound on
    # what the bridge holds in memory when Kafka stalls; the rest waits in Mosquitto's queue.
    bridge_max_in_flight: int = Field(default=2000, ge=1, le=65535)
    bridge_keepalive_s: int = 30
    # An unanswered PINGREQ this old means a half-open connection: closed and reconnected.
    bridge_ping_timeout_s: float = Field(default=10.0, gt=0)
    # MQTT 5 Maximum Packet Size sent in CONNECT, and the decoder's bound. Above Mosquitto's own
    # limit for devices (the broker forwards what it accepted, plus a few bytes of MQTT 5
    # header): a message Mosquitto took from a device is never dropped for being too large
    # for us; the contract's 64 KiB limit then dead-letters it.
    bridge_max_packet_bytes: int = Field(
        default=contract.MQTT_MAX_PACKET_BYTES + 4096, ge=contract.MQTT_MAX_PACKET_BYTES
    )
    bridge_reconnect_min_s: float = 0.5
    bridge_reconnect_max_s: float = 30.0
    # Mosquitto's $SYS counters (the bridge needs read on $SYS/# in the ACL). Mosquitto 2.0
    # publishes `dropped` only once it is non-zero, so its siblings are read too: seeing them
    # while `dropped` was never published means 0 dropped.
    bridge_sys_messages_filter: str = "$SYS/broker/publish/messages/+"

    bridge_readings_topic: str = topics.KAFKA_READINGS
    # Heartbeats to every partition while quiet (bridge/heartbeat.py), so a silent fleet's last
    # windows close; 0 turns them off.
    bridge_heartbeat_interval_s: float = Field(default=1.0, ge=0)
    bridge_dlq_topic: str = topics.KAFKA_DLQ
    bridge_compression: str = "lz4"
    # 10 ms, not 5: half as many produce requests for Kafka to serve (measured: the broker's CPU
    # at 13,000 msgs/s fell from 45 % to 33 % of a core at 20 ms), for a few ms of latency.
    bridge_linger_ms: float = 10.0
    bridge_batch_size: int = 256 * 1024
    # 0 = never give up on a record: while Kafka is down nothing is acknowledged, nothing is lost.
    bridge_message_timeout_ms: int = 0
    bridge_flush_timeout_s: float = 20.0

    # A known device's tenant never changes; an unknown one is re-read at most this often.
    bridge_unknown_device_ttl_s: float = 5.0
    # How often device group memberships are re-read: a change of membership counts for the
    # readings received after the next read (gateway/groups.py).
    bridge_groups_refresh_s: float = Field(default=10.0, gt=0)

    bridge_metrics_host: str = "127.0.0.1"
    bridge_metrics_port: int = endpoints.BRIDGE_METRICS_PORT

    @property
    def ca_file(self) -> Path:
        return self.bridge_ca_file or self.pki_dir / "ca.crt"

    @property
    def cert_file(self) -> Path:
        return self.bridge_cert_file or self.pki_dir / "services" / f"{self.bridge_client_id}.crt"

    @property
    def key_file(self) -> Path:
        return self.bridge_key_file or self.pki_dir / "services" / f"{self.bridge_client_id}.key"

    @field_validator("bridge_client_id")
    @classmethod
    def _a_bridge_identity(cls, value: str) -> str:
        if not pki.is_bridge_name(value) or not contract.is_valid_device_id(value):
            raise ValueError(
                f"{value!r}: the bridge's client id is its certificate's identity, "
                f"{pki.BRIDGE_PREFIX}<name> (e.g. {pki.BRIDGE_CN})"
            )
        return value

    def producer_config(self) -> KafkaConfig:
        """librdkafka settings: durable (acks=all, idempotent) and batched."""
        return self.kafka_client_config({
            "client.id": self.bridge_client_id,
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": self.bridge_compression,
            "linger.ms": self.bridge_linger_ms,
            "batch.size": self.bridge_batch_size,
            "message.timeout.ms": self.bridge_message_timeout_ms,
            # Room for the whole MQTT window several times over; never the memory bound itself.
            "queue.buffering.max.messages": max(100_000, 4 * self.bridge_max_in_flight),
            # Kafka's record limit, the same as the topics' max.message.bytes: a larger record is
            # refused at once (and dead-lettered), never retried against the broker.
            "message.max.bytes": contract.KAFKA_MAX_MESSAGE_BYTES,
            "reconnect.backoff.ms": 100,
            "reconnect.backoff.max.ms": 2000,
        })
