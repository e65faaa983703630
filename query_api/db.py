"""The Cassandra session of the query API: opened once, prepared statements, asyncio execution.

By default the driver answers on its own reactor thread and `execute` hands each result back
with `call_soon_threadsafe`; with `IOT_CASSANDRA_REACTOR=loop` its connections are transports of
the API's own loop (loop_connection.py) and a read is written, decoded and handed to the route
in one thread. Either way a request never blocks the loop while waiting.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from cassandra import DriverException
from cassandra.cluster import Cluster, ResponseFuture, Session
from cassandra.query import PreparedStatement, SimpleStatement, Statement, tuple_factory

from gateway.cassandra_session import build_cluster
from query_api.config import QueryApiSettings
from query_api.errors import DependencyDown
from query_api.loop_connection import LoopConnection

log = logging.getLogger(__name__)

Row = tuple[Any, ...]
# A connection has 32,768 stream ids (protocol v4); the pool keeps one connection per host.
_MAX_IN_FLIGHT = 4_096


def open_cluster(settings: QueryApiSettings) -> Cluster:
    """The API's cluster, not connected yet; called on the loop that serves the routes."""
    # Tuples, not named tuples: the repository reads columns by position, and it is faster.
    cluster = build_cluster(settings, row_factory=tuple_factory)
    if settings.cassandra_reactor == "loop":
        LoopConnection.use_loop(asyncio.get_running_loop())
        cluster.connection_class = LoopConnection
    return cluster


class CassandraStore:
    """One cluster connection for the app's lifetime; `connected` says whether queries can run."""

    def __init__(self, settings: QueryApiSettings) -> None:
        self._settings = settings
        self._cluster = open_cluster(settings)
        self._session: Session | None = None
        self.last_error: str | None = "not connected yet"
        # Reads in flight at once: beyond this they wait here, not in the driver (which, out of
        # stream ids, would block the loop its answers arrive on).
        self._in_flight = asyncio.Semaphore(_MAX_IN_FLIGHT)

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def connect(self) -> None:
        """Connect (blocking driver call, so in a thread); raise DependencyDown on failure."""
        try:
            self._session = await asyncio.to_thread(self._cluster.connect, self._settings.cassandra_keyspace)
        except Exception as exc:  # NoHostAvailable, InvalidRequest (no keyspace yet), timeouts
            self.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
            # A cluster whose first connect failed has shut itself down: the next try needs a new one.
            failed, self._cluster = self._cluster, open_cluster(self._settings)
            await asyncio.to_thread(failed.shutdown)
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
        async with self._in_flight:
            return await self._execute(statement, params)

    async def _execute(
        self, statement: PreparedStatement | SimpleStatement, params: Sequence[object]
    ) -> list[Row]:
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
        on_loop = LoopConnection.on_loop

        def done(rows: list[Row] | None) -> None:
            # On the loop (its own connections answer there): no hand-off needed.
            if on_loop():
                _resolve(future, rows)
            else:
                loop.call_soon_threadsafe(_resolve, future, rows)

        def failed(exc: BaseException) -> None:
            if on_loop():
                _fail(future, exc)
            else:
                loop.call_soon_threadsafe(_fail, future, exc)

        response.add_callbacks(done, failed)
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
