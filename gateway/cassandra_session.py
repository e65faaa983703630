"""The one way every stage opens Cassandra: token-aware, local DC first, the configured
consistency, credentials when set, bounded timeouts (settings in gateway.settings)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    LoadBalancingPolicy,
    TokenAwarePolicy,
    WhiteListRoundRobinPolicy,
)
from cassandra.query import named_tuple_factory

from gateway.settings import CassandraConnection

RowFactory = Callable[[list[str], list[Any]], Any]


class CassandraUnavailable(RuntimeError):
    """No contact point answered (the message names them)."""


def build_cluster(
    settings: CassandraConnection,
    *,
    timeout_s: float | None = None,
    connect_timeout_s: float | None = None,
    row_factory: RowFactory = named_tuple_factory,
    contact_points_only: bool = False,
) -> Cluster:
    """A Cluster not yet connected (`connect` below connects it, or call `cluster.connect`).

    timeout_s bounds each request and, unless connect_timeout_s is given, each connection
    attempt. contact_points_only: requests go to the contact points alone, never to the nodes
    discovered from them (a probe of one node's own readiness, not whichever node answers)."""
    timeout = settings.cassandra_timeout_s if timeout_s is None else timeout_s
    connect_timeout = timeout if connect_timeout_s is None else connect_timeout_s
    balancing: LoadBalancingPolicy = (
        WhiteListRoundRobinPolicy(settings.cassandra_contact_points) if contact_points_only
        else TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc))
    )
    profile = ExecutionProfile(
        load_balancing_policy=balancing,
        consistency_level=ConsistencyLevel.name_to_value[settings.cassandra_consistency],
        request_timeout=timeout,
        row_factory=row_factory,
    )
    auth = None
    if settings.cassandra_username is not None:
        password = settings.cassandra_password.get_secret_value() if settings.cassandra_password else ""
        auth = PlainTextAuthProvider(username=settings.cassandra_username, password=password)
    return Cluster(
        settings.cassandra_contact_points,
        port=settings.cassandra_port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=settings.cassandra_protocol_version,
        connect_timeout=connect_timeout,
        control_connection_timeout=connect_timeout,
        auth_provider=auth,
    )


def connect(
    settings: CassandraConnection,
    *,
    keyspace: str | None = None,
    timeout_s: float | None = None,
    row_factory: RowFactory = named_tuple_factory,
) -> Session:
    """A connected session (blocking; its cluster is `session.cluster`, shut it down when done).
    CassandraUnavailable, with the address, when Cassandra does not answer."""
    cluster = build_cluster(settings, timeout_s=timeout_s, row_factory=row_factory)
    try:
        return cluster.connect(keyspace)
    except Exception as exc:  # NoHostAvailable, timeouts, authentication
        cluster.shutdown()
        raise CassandraUnavailable(
            f"Cassandra at {settings.cassandra_hosts}:{settings.cassandra_port} is not reachable "
            f"({exc.__class__.__name__}: {exc})"
        ) from exc
