"""GET /groups and GET /groups/{group}/{window}: a tenant's device groups and their aggregates.

A group's windows are computed in the stream and stored in the aggregate tables under the
group's aggregate key (gateway/groups.py), so reading them is the device read under another key.
Tenant scoping is the devices' rule: another tenant's group answers 404, exactly as an unknown one.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Annotated, Any, Protocol

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel

from gateway.contract import METRIC_NAME_PATTERN, TENANT_PATTERN
from gateway.groups import GROUP_NAME_PATTERN, aggregate_key
from query_api.db import CassandraStore
from query_api.deps import PrincipalDep, RepositoryDep, StateDep
from query_api.errors import BadInput, NotFound
from query_api.listings import LazyStatements, TenantListings, app_reader
from query_api.params import MAX_LIMIT, page_query
from query_api.schemas import ErrorBody

router = APIRouter(tags=["groups"])

_TIME_HELP = "RFC 3339 with offset (2026-11-24T10:00:00Z) or epoch milliseconds"


class GroupItem(BaseModel):
    group: str
    tenant: str
    devices: int


class GroupsResponse(BaseModel):
    items: list[GroupItem]


class GroupDirectory(Protocol):
    async def listing(self, tenant: str | None) -> list[dict[str, Any]]: ...

    async def owners(self, name: str) -> list[str]: ...


class CassandraGroups:
    """The group tables through the API's session; a listing is kept for a couple of seconds."""

    def __init__(self, store: CassandraStore) -> None:
        self._store = store
        self._statements = LazyStatements(
            store,
            {
                "all": "SELECT tenant, name FROM device_groups",
                "tenant": "SELECT tenant, name FROM device_groups WHERE tenant = ?",
                "owners": "SELECT tenant FROM device_groups WHERE name = ? ALLOW FILTERING",
                "size": "SELECT count(*) FROM group_members WHERE tenant = ? AND name = ?",
            },
        )
        self._listings: TenantListings[list[dict[str, Any]]] = TenantListings()

    async def listing(self, tenant: str | None) -> list[dict[str, Any]]:
        return await self._listings.of(tenant, self._read_listing)

    async def _read_listing(self, tenant: str | None) -> list[dict[str, Any]]:
        rows = await self._statements.tenant_rows(tenant)
        size = await self._statements.get("size")
        counts = await asyncio.gather(*(self._store.execute(size, (t, n)) for t, n in rows))
        return sorted(
            ({"group": name, "tenant": owner, "devices": int(count[0][0]) if count else 0}
             for (owner, name), count in zip(rows, counts, strict=True)),
            key=lambda item: (item["tenant"], item["group"]),
        )

    async def owners(self, name: str) -> list[str]:
        rows = await self._statements.execute("owners", (name,))
        return sorted(row[0] for row in rows)


async def get_groups(request: Request, state: StateDep) -> GroupDirectory:
    return app_reader(request, state, "group_directory", CassandraGroups)


GroupsDep = Annotated[GroupDirectory, Depends(get_groups)]

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "bad group name, time, range or cursor"},
    401: {"model": ErrorBody, "description": "no token, or not a valid token of realm iot"},
    404: {"model": ErrorBody, "description": "no such group, or another tenant's group"},
    422: {"description": "malformed window, metric or limit"},
    503: {"model": ErrorBody, "description": "Cassandra or Keycloak unavailable"},
}


@router.get("/groups", response_model=GroupsResponse, responses=_ERRORS, summary="The caller's groups")
async def list_groups(principal: PrincipalDep, groups: GroupsDep) -> Response:
    """The caller's tenant's groups (an iot-admin's: every tenant's) with their member counts."""
    items = await groups.listing(None if principal.is_admin else principal.tenant)
    return Response(orjson.dumps({"items": items}), media_type="application/json")


async def owning_tenant(
    principal: PrincipalDep, groups: GroupDirectory, name: str, tenant: str | None
) -> str:
    """The tenant whose group `name` the caller reads; NotFound exactly as for an unknown group."""
    owners = [t for t in await groups.owners(name) if principal.may_read(t)]
    if tenant is not None:
        owners = [t for t in owners if t == tenant]
    if not owners:
        raise NotFound(f"group {name} not found")
    if len(owners) > 1:
        raise BadInput(f"group {name} exists in tenants {', '.join(owners)}: pass `tenant`")
    return owners[0]


@router.get(
    "/groups/{group}/{window}",
    responses=_ERRORS,
    summary="Aggregates over the readings of a group's devices",
)
async def group_windows(
    principal: PrincipalDep,
    groups: GroupsDep,
    repository: RepositoryDep,
    group: Annotated[str, Path(pattern=f"^{GROUP_NAME_PATTERN}$")],
    window: Annotated[str, Path(description="1m, 5m, 15m, 1h, 1d or all")],
    from_: Annotated[
        str | None, Query(alias="from", max_length=64, description=f"{_TIME_HELP}; inclusive")
    ] = None,
    to: Annotated[str | None, Query(max_length=64, description=f"{_TIME_HELP}; exclusive")] = None,
    metric: Annotated[str | None, Query(pattern=METRIC_NAME_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200, description="`next` of the previous page")] = None,
    tz: Annotated[str | None, Query(max_length=64, description="IANA time zone (default UTC)")] = None,
    tenant: Annotated[
        str | None,
        Query(
            pattern=TENANT_PATTERN,
            description="iot-admin only: whose group, when several tenants use the name",
        ),
    ] = None,
) -> Response:
    """Like /query/{deviceId}/{window}, over every reading of the group's devices."""
    # Every parameter is checked before the group is looked up; its key is known after that.
    query = page_query(
        "",
        window,
        from_=from_,
        to=to,
        metric=metric,
        limit=limit,
        cursor=cursor,
        tz=tz,
        now_ms=int(time.time() * 1000),
    )
    owner = await owning_tenant(principal, groups, group, tenant)
    page = await repository.read(replace(query, key=aggregate_key(owner, group)))
    return Response(page.json(group=group, window=query.window.value), media_type="application/json")
