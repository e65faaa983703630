"""Opening a Cassandra session the same way everywhere (token-aware, local DC, bounded timeouts)."""

from __future__ import annotations

from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy


def connect(
    hosts: list[str], port: int, keyspace: str | None = None, timeout_s: float = 10.0
) -> tuple[Cluster, Session]:
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()),
        request_timeout=timeout_s,
    )
    cluster = Cluster(
        hosts,
        port=port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=5,
        connect_timeout=timeout_s,
    )
    session = cluster.connect(keyspace)
    return cluster, session
