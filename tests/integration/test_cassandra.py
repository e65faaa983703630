"""Cassandra through the stack runner: the application keyspace, and a CQL round trip."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime

import pytest
from cassandra import ProtocolVersion
from cassandra.cluster import Cluster, Session

from gateway import endpoints
from stack.config import StackSettings

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="session")
def cql(services: Services) -> Iterator[Session]:
    with services({"cassandra"}) as settings:
        cluster = Cluster(
            [endpoints.HOST], port=settings.cassandra_port, protocol_version=ProtocolVersion.V5
        )
        try:
            yield cluster.connect()
        finally:
            cluster.shutdown()


def test_application_keyspace_exists(cql: Session) -> None:
    row = cql.execute(
        "SELECT replication FROM system_schema.keyspaces WHERE keyspace_name = %s",
        (endpoints.CASSANDRA_KEYSPACE,),
    ).one()
    assert row is not None
    assert row.replication["class"].endswith("SimpleStrategy")


def test_cql_round_trip(cql: Session) -> None:
    table = f"{endpoints.CASSANDRA_KEYSPACE}.roundtrip_{uuid.uuid4().hex[:16]}"
    cql.execute(
        f"CREATE TABLE {table} (device text, ts timestamp, value double, "
        "PRIMARY KEY (device, ts)) WITH CLUSTERING ORDER BY (ts ASC)"
    )
    try:
        insert = cql.prepare(f"INSERT INTO {table} (device, ts, value) VALUES (?, ?, ?)")
        base = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
        written = [(base.replace(minute=m), 20.0 + m) for m in range(5)]
        for ts, value in written:
            cql.execute(insert, ("device-1", ts, value))
        rows = cql.execute(f"SELECT ts, value FROM {table} WHERE device = %s", ("device-1",))
        # The driver returns naive UTC datetimes.
        read = [(row.ts.replace(tzinfo=UTC), row.value) for row in rows]
        assert read == written
    finally:
        cql.execute(f"DROP TABLE IF EXISTS {table}")
