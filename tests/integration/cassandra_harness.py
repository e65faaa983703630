"""The application keyspace, migrated, on the Cassandra the fixtures start (with whatever other
services a test module needs beside it)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from cassandra import ProtocolVersion
from cassandra.cluster import Cluster, Session

from gateway import endpoints
from stack.config import StackSettings
from storage.config import StorageSettings
from storage.migrate import migrate

Services = Callable[..., AbstractContextManager[StackSettings]]


@contextlib.contextmanager
def migrated_cql(services: Services, names: set[str]) -> Iterator[Session]:
    with services({"cassandra", *names}) as stack:
        cluster = Cluster([endpoints.HOST], port=stack.cassandra_port, protocol_version=ProtocolVersion.V5)
        try:
            session = cluster.connect()
            migrate(session, StorageSettings())
            yield session
        finally:
            cluster.shutdown()
