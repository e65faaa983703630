"""Settings of the storage stage: the Cassandra schema and the aggregates writer (IOT_ prefix)."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from gateway import endpoints, topics
from gateway.settings import CassandraConnection, KafkaConnection


class StorageSettings(KafkaConnection, CassandraConnection):
    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    # Replication of the keyspace when the migration creates it; a cluster wants
    # {'class': 'NetworkTopologyStrategy', 'dc1': 3}.
    cassandra_replication: str = "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    ttl_1m_s: int = 30 * 24 * 3600
    ttl_1h_s: int = 2 * 365 * 24 * 3600

    writer_group: str = "cassandra-writer"
    writer_topics: str = ",".join([topics.KAFKA_AGG_1M, topics.KAFKA_AGG_1H, topics.KAFKA_AGG_ALL])
    writer_batch_size: int = 500
    writer_concurrency: int = 64
    writer_max_retries: int = 8
    writer_metrics_port: int = endpoints.WRITER_METRICS_PORT
