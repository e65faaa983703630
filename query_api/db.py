"""The Cassandra session of the query API: opened once, prepared statements, asyncio execution.

cassandra-driver answers on its own event-loop thread; `execute` hands each result back to the
asyncio loop with `call_soon_threadsafe`, so a request never blocks the loop while waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from cassandra import DriverException
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    ResponseFuture,
    Session,
)
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import PreparedStatement, SimpleStatement, Statement, tuple_factory

from query_api.config import QueryApiSettings
from query_api.errors import DependencyDown

log = logging.getLogger(__name__)

Row = tuple[Any, ...]


class CassandraStore:
    """One cluster connection for the app's lifetime; `connected` says whether queries can run."""

    def __init__(self, settings: QueryApiSettings) -> None:
        self._settings = settings
        profile = ExecutionProfile(
            load_balancing_policy=TokenAwarePolicy(
                DCAwareRoundRobinPolicy(local_dc=settings.cassandra_local_dc)
            ),
            request_timeout=settings.cassandra_timeout_s,
            # Tuples, not named tuples: the repository reads columns by position, and it is faster.
            row_factory=tuple_factory,
        )
        self._cluster = Cluster(
            contact_points=settings.cassandra_contact_points,
            port=settings.cassandra_port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
            connect_timeout=settings.cassandra_timeout_s,
            protocol_version=settings.cassandra_protocol_version,
        )
        self._session: Session | None = None
        self.last_error: str | None = "not connected yet"

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def connect(self) -> None:
        """Connect (blocking driver call, so in a thread); raise DependencyDown on failure."""
        try:
            self._session = await asyncio.to_thread(self._cluster.connect, self._settings.cassandra_keyspace)
        except Exception as exc:  # NoHostAvailable, InvalidRequest (no keyspace yet), timeouts
            self.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
            raise DependencyDown(f"Cassandra: {self.last_error}") from exc
        self.last_error = None
        log.info(
            "connected to Cassandra %s:%d keyspace %s",
            self._settings.cassandra_hosts,
            self._settings.cassandra_port,
            self._settings.cassandra_keyspace,
        )

    async def prepare(self, cql: str) -> PreparedStatement:
        session = self._require()
        try:
            return await asyncio.to_thread(session.prepare, cql)
        except DriverException as exc:
            raise DependencyDown(f"Cassandra prepare failed: {exc}") from exc

    async def execute(
        self, statement: PreparedStatement | SimpleStatement, params: Sequence[object]
    ) -> list[Row]:
        """Run one statement and return all its rows (callers bound them with a CQL LIMIT)."""
        session = self._require()
        bound: Statement = statement.bind(params) if isinstance(statement, PreparedStatement) else statement
        # Paging off: the LIMIT keeps results small, and one round trip is what we want.
        bound.fetch_size = None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Row]] = loop.create_future()
        try:
            response: ResponseFuture = session.execute_async(bound)
        except Exception as exc:
            raise DependencyDown(f"Cassandra: {exc}") from exc
        response.add_callbacks(
            lambda rows: loop.call_soon_threadsafe(_resolve, future, rows),
            lambda exc: loop.call_soon_threadsafe(_fail, future, exc),
        )
        try:
            return await future
        except DependencyDown:
            raise
        except Exception as exc:  # timeouts, unavailable, overloaded: the caller sees a 503
            raise DependencyDown(f"Cassandra: {exc.__class__.__name__}: {exc}"[:300]) from exc

    async def ping(self) -> None:
        await self.execute(SimpleStatement("SELECT release_version FROM system.local"), ())

    def close(self) -> None:
        self._cluster.shutdown()
        self._session = None

    def _require(self) -> Session:
        if self._session is None:
            raise DependencyDown(f"Cassandra not connected: {self.last_error}")
        return self._session


def _resolve(future: asyncio.Future[list[Row]], rows: list[Row] | None) -> None:
    if not future.done():
        future.set_result(list(rows or []))


def _fail(future: asyncio.Future[list[Row]], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
