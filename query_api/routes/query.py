"""GET /query/{deviceId}/{window} (CONTRACT.md "Query API")."""

from __future__ import annotations

import time
from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Query, Response

from gateway.contract import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from query_api.deps import PrincipalDep, RepositoryDep
from query_api.errors import NotFound
from query_api.params import (
    MAX_LIMIT,
    Cursor,
    Window,
    check_device_id,
    check_metric,
    check_zone,
    parse_window,
    parse_zone,
    time_range,
)
from query_api.schemas import ErrorBody, QueryResponse

router = APIRouter(tags=["query"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {"model": ErrorBody, "description": "bad device id, window, tz, metric, time, range or cursor"},
    401: {"model": ErrorBody, "description": "no token, or not a valid token of realm iot"},
    404: {"model": ErrorBody, "description": "no such device, or another tenant's device"},
    422: {"description": "malformed limit"},
    503: {"model": ErrorBody, "description": "Cassandra or Keycloak unavailable"},
}
_TIME_HELP = "RFC 3339 with offset (2026-11-24T10:00:00Z) or epoch milliseconds"


@router.get(
    "/query/{deviceId}/{window}",
    response_model=QueryResponse,
    responses=_ERRORS,
    summary="Aggregates of one device",
)
async def query(
    principal: PrincipalDep,
    repository: RepositoryDep,
    # Checked by check_device_id (a 400 naming the rule); the pattern is for the OpenAPI document.
    device_id: Annotated[
        str, Path(alias="deviceId", max_length=200, json_schema_extra={"pattern": DEVICE_ID_PATTERN})
    ],
    # Checked by parse_window (a 400 naming the windows); the enum is for the OpenAPI document.
    window: Annotated[str, Path(max_length=20, json_schema_extra={"enum": [w.value for w in Window]})],
    from_: Annotated[
        str | None, Query(alias="from", max_length=64, description=f"{_TIME_HELP}; inclusive")
    ] = None,
    to: Annotated[str | None, Query(max_length=64, description=f"{_TIME_HELP}; exclusive")] = None,
    metric: Annotated[
        str | None, Query(max_length=200, json_schema_extra={"pattern": METRIC_NAME_PATTERN})
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = MAX_LIMIT,
    cursor: Annotated[str | None, Query(max_length=200, description="`next` of the previous page")] = None,
    tz: Annotated[
        str | None,
        Query(
            max_length=64,
            description="IANA time zone (default UTC): `1d` windows start at its local midnight;"
            " `1h` is refused in a zone whose offset is not whole hours",
        ),
    ] = None,
) -> Response:
    """Windows starting in [from, to) (default: the last hour for 1m, 6 hours for 5m and 15m,
    7 days for 1h, 30 days for 1d); `all` ignores from/to. 5m, 15m and 1d are rolled up from the
    stored 1m and 1h rows. At most `limit` items; `next` pages on."""
    check_device_id(device_id)
    check_metric(metric)
    kind = parse_window(window)
    zone = parse_zone(tz)
    span = time_range(kind, from_, to, int(time.time() * 1000)) if kind is not Window.ALL else None
    if span is not None:
        check_zone(kind, zone, span)
    position = Cursor.decode(cursor) if cursor is not None else None
    tenant = await repository.tenant_of(device_id)
    # Another tenant's device answers exactly like a missing one: existence is not disclosed.
    if tenant is None or not principal.may_read(tenant):
        raise NotFound(f"device {device_id} not found")
    if span is None:
        page = await repository.totals(device_id, metric, limit, position)
    else:
        page = await repository.windows(device_id, kind, span, metric, limit, position, zone=zone)
    body = {
        "deviceId": device_id,
        "window": kind.value,
        "items": page.items if page.encoded_items is None else page.encoded_items,
        "next": page.next_cursor,
    }
    return Response(orjson.dumps(body), media_type="application/json")
