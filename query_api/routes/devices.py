"""GET /devices: the caller's devices from the registry, with when each was last seen.

The registry (gateway/registry.py) is small next to the aggregates: a tenant's rows are read in
one go through the tenant index, sorted by id and kept for a couple of seconds, and pages are cut
from that list (keyset: the cursor is the last id of the previous page). `lastSeen` is the newest
`last_ts` of the device's all-time rows, read for the devices of the page only.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import re
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import orjson
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel

from gateway import registry
from gateway.contract import DEVICE_ID_PATTERN
from query_api.db import CassandraStore
from query_api.deps import PrincipalDep, StateDep
from query_api.errors import BadInput
from query_api.listings import LazyStatements, TenantListings, app_reader
from query_api.repository import iso
from query_api.schemas import ErrorBody

router = APIRouter(tags=["devices"])

MAX_DEVICES_LIMIT = 1000
# A registry larger than this per tenant wants token-range paging instead of one read.
_MAX_LISTED = 100_000
_DEVICE_ID = re.compile(DEVICE_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class DeviceRow:
    device_id: str
    tenant: str
    created_ms: int | None


class DeviceItem(BaseModel):
    deviceId: str
    tenant: str
    createdAt: str | None
    lastSeen: str | None


class DevicesResponse(BaseModel):
    items: list[DeviceItem]
    next: str | None


class DeviceDirectory(Protocol):
    """What the route needs; RegistryDirectory is the real one, unit tests bring a fake."""

    async def listing(self, tenant: str | None) -> list[DeviceRow]: ...

    async def last_seen(self, device_ids: list[str]) -> dict[str, int]: ...


class RegistryDirectory:
    def __init__(self, store: CassandraStore) -> None:
        self._store = store
        columns = f"SELECT device_id, tenant, toUnixTimestamp(created_at) FROM {registry.TABLE}"
        self._statements = LazyStatements(
            store,
            {
                "all": f"{columns} LIMIT {_MAX_LISTED}",
                "tenant": f"{columns} WHERE tenant = ? LIMIT {_MAX_LISTED}",
                "seen": "SELECT device_id, toUnixTimestamp(last_ts) FROM agg_all WHERE device_id IN ?",
            },
        )
        self._listings: TenantListings[list[DeviceRow]] = TenantListings()

    async def listing(self, tenant: str | None) -> list[DeviceRow]:
        """Every device of `tenant` (None: of every tenant), sorted by id; reused briefly."""
        return await self._listings.of(tenant, self._read_listing)

    async def _read_listing(self, tenant: str | None) -> list[DeviceRow]:
        rows = await self._statements.tenant_rows(tenant)
        return sorted(
            (DeviceRow(device_id, owner, created) for device_id, owner, created in rows if owner),
            key=lambda row: row.device_id,
        )

    async def last_seen(self, device_ids: list[str]) -> dict[str, int]:
        if not device_ids:
            return {}
        rows = await self._statements.execute("seen", (device_ids,))
        seen: dict[str, int] = {}
        for device_id, last_ts in rows:
            if last_ts is not None and last_ts > seen.get(device_id, -1):
                seen[device_id] = last_ts
        return seen


async def get_directory(request: Request, state: StateDep) -> DeviceDirectory:
    return app_reader(request, state, "device_directory", RegistryDirectory)


DirectoryDep = Annotated[DeviceDirectory, Depends(get_directory)]


def encode_cursor(device_id: str) -> str:
    return base64.urlsafe_b64encode(device_id.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> str:
    try:
        device_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadInput("cursor: not a cursor of GET /devices") from exc
    if not _DEVICE_ID.match(device_id):
        raise BadInput("cursor: not a cursor of GET /devices")
    return device_id


@router.get(
    "/devices",
    response_model=DevicesResponse,
    responses={
        400: {"model": ErrorBody, "description": "bad cursor"},
        401: {"model": ErrorBody, "description": "no token, or not a valid token of realm iot"},
        422: {"description": "bad limit or search text"},
        503: {"model": ErrorBody, "description": "Cassandra or Keycloak unavailable"},
    },
    summary="The caller's devices",
)
async def devices(
    principal: PrincipalDep,
    directory: DirectoryDep,
    limit: Annotated[int, Query(ge=1, le=MAX_DEVICES_LIMIT)] = 100,
    cursor: Annotated[str | None, Query(max_length=200, description="`next` of the previous page")] = None,
    q: Annotated[
        str | None,
        Query(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="only ids containing this (any case)"),
    ] = None,
) -> Response:
    """The caller's tenant's devices (an iot-admin's: every tenant's), sorted by id, with
    `createdAt` (provisioned) and `lastSeen` (newest reading in the all-time rollup, or null)."""
    after = decode_cursor(cursor) if cursor is not None else None
    listed = await directory.listing(None if principal.is_admin else principal.tenant)
    needle = q.lower() if q else None
    start = bisect.bisect_right(listed, after, key=lambda row: row.device_id) if after is not None else 0
    page: list[DeviceRow] = []
    more = False
    for row in listed[start:] if start else listed:
        if needle is not None and needle not in row.device_id.lower():
            continue
        if len(page) == limit:
            more = True
            break
        page.append(row)
    seen = await directory.last_seen([row.device_id for row in page])
    items: list[dict[str, Any]] = [
        {
            "deviceId": row.device_id,
            "tenant": row.tenant,
            "createdAt": iso(row.created_ms),
            "lastSeen": iso(seen.get(row.device_id)),
        }
        for row in page
    ]
    body = {"items": items, "next": encode_cursor(page[-1].device_id) if more else None}
    return Response(orjson.dumps(body), media_type="application/json")
