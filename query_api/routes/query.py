"""GET /query/{deviceId}/{window} (docs/contract.md "Query API").

This is the API's busiest route, and a fleet's polls are mostly distinct URLs that no answer
cache holds. FastAPI's per-parameter resolution (dependencies, declared query parameters) cost
more CPU than the Cassandra read of a whole hour, so this route reads its parameters itself from
the request, with the same checks `params.py` makes for every input: the parameters are declared
to the OpenAPI document below (which also tells hot_answers.py what to key on), not to FastAPI's
resolver. Every bad value is a 400 naming the parameter.
"""

from __future__ import annotations

import re
import time
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute

from gateway.contract import DEVICE_ID_PATTERN, METRIC_NAME_PATTERN
from query_api.auth import Principal
from query_api.errors import AuthFailure, BadInput, NotFound, Unauthorized
from query_api.params import MAX_LIMIT, Window, check_device_id, page_query
from query_api.schemas import ErrorBody, QueryResponse
from query_api.state import AppState

router = APIRouter(tags=["query"])

_ERRORS: dict[int | str, dict[str, object]] = {
    400: {
        "model": ErrorBody,
        "description": "bad device id, window, tz, metric, time, range, limit or cursor",
    },
    401: {"model": ErrorBody, "description": "no token, or not a valid token of realm iot"},
    404: {"model": ErrorBody, "description": "no such device, or another tenant's device"},
    503: {"model": ErrorBody, "description": "Cassandra or Keycloak unavailable"},
}
_TIME_HELP = "RFC 3339 with offset (2026-11-24T10:00:00Z) or epoch milliseconds"
_LIMIT = re.compile(r"[0-9]{1,6}")
# name -> longest value accepted (longer: a 400 before any parsing).
_MAX_LENGTH = {"from": 64, "to": 64, "metric": 200, "limit": 6, "cursor": 200, "tz": 64}


def _parameter(name: str, where: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    parameter: dict[str, Any] = {"name": name, "in": where, "required": where == "path", "schema": schema}
    if description:
        parameter["description"] = description
    return parameter


_PARAMETERS = [
    _parameter("deviceId", "path", {"type": "string", "maxLength": 200, "pattern": DEVICE_ID_PATTERN}),
    _parameter("window", "path", {"type": "string", "enum": [w.value for w in Window]}),
    _parameter("from", "query", {"type": "string", "maxLength": 64}, f"{_TIME_HELP}; inclusive"),
    _parameter("to", "query", {"type": "string", "maxLength": 64}, f"{_TIME_HELP}; exclusive"),
    _parameter("metric", "query", {"type": "string", "maxLength": 200, "pattern": METRIC_NAME_PATTERN}),
    _parameter(
        "limit", "query", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": MAX_LIMIT}
    ),
    _parameter("cursor", "query", {"type": "string", "maxLength": 200}, "`next` of the previous page"),
    _parameter(
        "tz",
        "query",
        {"type": "string", "maxLength": 64},
        "IANA time zone (default UTC): `1d` windows start at its local midnight;"
        " `1h` is refused in a zone whose offset is not whole hours",
    ),
]


def _query_values(request: Request) -> dict[str, str]:
    """The declared query parameters, the last value of each (as hot_answers.py keys them)."""
    values: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        limit = _MAX_LENGTH.get(name)
        if limit is None:
            continue
        if len(value) > limit:
            raise BadInput(f"{name}: longer than {limit} characters")
        values[name] = value
    return values


async def _principal(state: AppState, authorization: str | None) -> Principal:
    """deps.get_principal without FastAPI's resolver: HTTPBearer's reading of the header."""
    scheme, _, credentials = (authorization or "").partition(" ")
    credentials = credentials.strip()
    if scheme.lower() != "bearer" or not credentials:
        raise Unauthorized(AuthFailure.MISSING_TOKEN, "a bearer token is required")
    return await state.validator.validate(credentials)


def _limit(value: str | None) -> int:
    if value is None:
        return MAX_LIMIT
    if not _LIMIT.fullmatch(value) or not 1 <= int(value) <= MAX_LIMIT:
        raise BadInput(f"limit: expected an integer from 1 to {MAX_LIMIT}, got {value[:20]!r}")
    return int(value)


@router.get(
    "/query/{deviceId}/{window}",
    response_model=QueryResponse,
    responses=_ERRORS,
    summary="Aggregates of one device",
    openapi_extra={"parameters": _PARAMETERS, "security": [{"HTTPBearer": []}]},
)
async def query(request: Request) -> Response:
    """Windows starting in [from, to) (default: the last hour for 1m, 6 hours for 5m and 15m,
    7 days for 1h, 30 days for 1d); `all` ignores from/to. 5m, 15m and 1d are rolled up from the
    stored 1m and 1h rows. At most `limit` items; `next` pages on."""
    state: AppState = request.app.state.iot
    principal = await _principal(state, request.headers.get("authorization"))
    device_id = check_device_id(request.path_params["deviceId"])
    values = _query_values(request)
    query = page_query(
        device_id,
        request.path_params["window"],
        from_=values.get("from"),
        to=values.get("to"),
        metric=values.get("metric"),
        limit=_limit(values.get("limit")),
        cursor=values.get("cursor"),
        tz=values.get("tz"),
        now_ms=int(time.time() * 1000),
    )
    repository = state.repository
    tenant = await repository.tenant_of(device_id)
    # Another tenant's device answers exactly like a missing one: existence is not disclosed.
    if tenant is None or not principal.may_read(tenant):
        raise NotFound(f"device {device_id} not found")
    page = await repository.read(query)
    return Response(page.json(deviceId=device_id, window=query.window.value), media_type="application/json")


# The route itself, which hot_answers.py calls without FastAPI's routing layers.
QUERY_ROUTE = next(r for r in router.routes if isinstance(r, APIRoute))
