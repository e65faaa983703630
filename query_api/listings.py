"""What the registry's listings (routes/devices.py, routes/groups.py) share: statements prepared
on first use, per-tenant listings kept for a moment, one reader per app."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from cassandra.query import PreparedStatement
from starlette.requests import Request

from query_api.db import CassandraStore, Row
from query_api.errors import DependencyDown
from query_api.state import AppState

T = TypeVar("T")
# Tenants whose listings are kept at once; beyond, all are forgotten (a listing is cheap to read).
_MAX_TENANTS = 1000


class LazyStatements:
    """Statements prepared together when one is first needed: the session may connect after
    the app starts, and a listing route may never be called."""

    def __init__(self, store: CassandraStore, cql: dict[str, str]) -> None:
        self._store = store
        self._cql = cql
        self._prepared: dict[str, PreparedStatement] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> PreparedStatement:
        if not self._prepared:
            async with self._lock:
                if not self._prepared:
                    self._prepared = {key: await self._store.prepare(cql) for key, cql in self._cql.items()}
        return self._prepared[name]

    async def execute(self, name: str, params: Sequence[object] = ()) -> list[Row]:
        return await self._store.execute(await self.get(name), params)

    async def tenant_rows(self, tenant: str | None) -> list[Row]:
        """The rows of statement `tenant` for one tenant, or of `all` for every tenant (None)."""
        if tenant is None:
            return await self.execute("all")
        return await self.execute("tenant", (tenant,))


class TenantListings(Generic[T]):
    """A listing per tenant (None: every tenant's), reused for `keep_s`: a new device or group
    shows within that, and a console's page of listings costs one read."""

    def __init__(self, keep_s: float = 2.0) -> None:
        self._keep_s = keep_s
        self._kept: dict[str | None, tuple[T, float]] = {}

    async def of(self, tenant: str | None, read: Callable[[str | None], Awaitable[T]]) -> T:
        """The tenant's listing, read with `read` unless one was read within `keep_s`."""
        kept = self._kept.get(tenant)
        if kept is not None and kept[1] > time.monotonic():
            return kept[0]
        listing = await read(tenant)
        if len(self._kept) >= _MAX_TENANTS:
            self._kept.clear()
        self._kept[tenant] = (listing, time.monotonic() + self._keep_s)
        return listing


def app_reader(request: Request, state: AppState, name: str, make: Callable[[CassandraStore], T]) -> T:
    """The app's one reader `name` over its Cassandra session, made on first use."""
    reader: T | None = getattr(request.app.state, name, None)
    if reader is None:
        if state.store is None:
            raise DependencyDown(f"{name.replace('_', ' ')}: Cassandra is not configured")
        reader = make(state.store)
        setattr(request.app.state, name, reader)
    return reader
