"""GET /health: each dependency's state, no token; 503 when one is down."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from query_api.deps import StateDep
from query_api.errors import QueryApiError

router = APIRouter(tags=["operations"])
_CHECK_TIMEOUT_S = 2.0


@router.get("/health", summary="State of each dependency; 503 when one is down")
async def health(state: StateDep) -> JSONResponse:
    cassandra: dict[str, object] = {"status": "up"}
    if state.store is not None:
        try:
            await asyncio.wait_for(state.store.ping(), _CHECK_TIMEOUT_S)
        except (QueryApiError, TimeoutError) as exc:
            cassandra = {"status": "down", "error": str(exc) or "timeout"}
        else:
            # Connected is not enough: the tables must exist for the statements to be prepared.
            reason = getattr(state.repository, "not_ready_reason", None)
            if reason is not None:
                cassandra = {"status": "down", "error": reason}
    # Rate-limited by the cache itself: /health polled every second still fetches rarely.
    await state.jwks.refresh()
    keycloak: dict[str, object] = (
        {"status": "up", "signingKeys": state.jwks.key_count}
        if state.jwks.last_error is None and state.jwks.key_count
        else {"status": "down", "error": state.jwks.last_error or "no signing keys"}
    )
    dependencies = {"cassandra": cassandra, "keycloak": keycloak}
    up = all(dep["status"] == "up" for dep in dependencies.values())
    return JSONResponse(
        {"status": "up" if up else "down", "dependencies": dependencies},
        status_code=200 if up else 503,
    )
