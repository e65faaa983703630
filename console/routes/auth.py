"""Sign-in (authorization code + PKCE through Keycloak), sign-out, the console's own health."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from console.deps import StateDep
from console.errors import BadInput, SignedOut
from console.sessions import COOKIE_NAME
from console.state import ConsoleState

log = logging.getLogger(__name__)
router = APIRouter()


def _set_cookie(response: Response, state: ConsoleState, value: str) -> None:
    response.set_cookie(
        COOKIE_NAME,
        value,
        httponly=True,
        # Lax: the cookie rides along on the top-level redirect back from Keycloak, never on a
        # cross-site POST or a cross-site fetch.
        samesite="lax",
        secure=state.settings.cookie_secure,
        path="/",
    )


@router.get("/", include_in_schema=False)
async def home(request: Request, state: StateDep) -> Response:
    signed_in = state.sessions.get(request.cookies.get(COOKIE_NAME)) is not None
    return RedirectResponse("/devices" if signed_in else "/signed-out", status_code=303)


@router.get("/signed-out", include_in_schema=False)
async def signed_out(request: Request, state: StateDep) -> Response:
    return state.templates.TemplateResponse(request, "signed_out.html", {"session": None})


@router.get("/login")
async def login(
    request: Request, state: StateDep, next_path: Annotated[str | None, Query(alias="next")] = None
) -> Response:
    pending, url = state.keycloak.start_login(next_path)
    # The cookie now names the pending sign-in; the callback swaps it for a fresh session id
    # (no session fixation: the id a browser held before signing in never becomes a session).
    response = RedirectResponse(url, status_code=303)
    _set_cookie(response, state, state.pending.put(pending))
    return response


@router.get("/auth/callback")
async def callback(
    request: Request,
    state: StateDep,
    code: Annotated[str | None, Query(max_length=4096)] = None,
    state_param: Annotated[str | None, Query(alias="state", max_length=200)] = None,
    error: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    pending = state.pending.pop(request.cookies.get(COOKIE_NAME))
    if error:
        state.metrics.sign_ins.labels("refused").inc()
        raise SignedOut(f"Keycloak did not sign you in: {error}")
    if pending is None:
        raise SignedOut("this sign-in was not started here or took too long; sign in again")
    if not code or not state_param or not hmac.compare_digest(state_param, pending.state):
        raise BadInput("the sign-in answer does not match the sign-in that was started")
    try:
        session = await state.keycloak.finish_login(pending, code)
    except SignedOut:
        state.metrics.sign_ins.labels("refused").inc()
        raise
    state.metrics.sign_ins.labels("ok").inc()
    log.info("signed in: %s (tenant %s, admin %s)", session.username, session.tenant, session.is_admin)
    response = RedirectResponse(pending.next_path, status_code=303)
    _set_cookie(response, state, state.sessions.put(session))
    return response


@router.post("/logout")
async def logout(
    request: Request, state: StateDep, csrf: Annotated[str, Form(max_length=200)] = ""
) -> Response:
    sid = request.cookies.get(COOKIE_NAME)
    session = state.sessions.get(sid)
    if session is not None:
        if not hmac.compare_digest(csrf, session.csrf):
            raise BadInput("sign-out form out of date; reload the page")
        state.sessions.pop(sid)
        await state.keycloak.end_session(session)
        state.metrics.sign_outs.inc()
        log.info("signed out: %s", session.username)
    response = RedirectResponse("/signed-out", status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="lax")
    return response


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/health")
async def health(state: StateDep) -> JSONResponse:
    return JSONResponse(
        {
            "status": "up",
            "sessions": len(state.sessions),
            "pendingSignIns": len(state.pending),
            "chartLibrary": (state.settings.console_assets_dir / "uplot" / "dist").is_dir(),
        }
    )
