"""Dependencies of the routes, as Annotated aliases (the full-stack-fastapi-template way)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from query_api.auth import Principal
from query_api.errors import AuthFailure, Unauthorized
from query_api.repository import AggregateReader
from query_api.state import AppState

# auto_error=False: a missing token must be our 401 (JSON, WWW-Authenticate, counted), not
# FastAPI's 403. The scheme still appears in the OpenAPI document, so /docs can send a token.
_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="JWT",
    description="An access token of Keycloak realm `iot` (client `query-service`).",
)


# `async def` even where nothing awaits: FastAPI runs plain `def` dependencies in a thread pool,
# a thread hand-off per request for a dictionary lookup.
async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.iot
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_principal(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or not credentials.credentials:
        raise Unauthorized(AuthFailure.MISSING_TOKEN, "a bearer token is required")
    return await state.validator.validate(credentials.credentials)


async def get_repository(state: StateDep) -> AggregateReader:
    return state.repository


PrincipalDep = Annotated[Principal, Depends(get_principal)]
RepositoryDep = Annotated[AggregateReader, Depends(get_repository)]
