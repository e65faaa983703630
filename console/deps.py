"""Dependencies of the routes, as Annotated aliases."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Depends, Query, Request

from console.errors import BadInput, Forbidden, SignedOut
from console.sessions import COOKIE_NAME, Session
from console.state import ConsoleState


async def get_state(request: Request) -> ConsoleState:
    state: ConsoleState = request.app.state.console
    return state


StateDep = Annotated[ConsoleState, Depends(get_state)]


async def get_session(request: Request, state: StateDep) -> Session:
    """The signed-in session with a usable access token, or SignedOut."""
    sid = request.cookies.get(COOKIE_NAME)
    session = state.sessions.get(sid)
    if session is None:
        raise SignedOut("not signed in")
    try:
        return await state.keycloak.fresh(session)
    except SignedOut:
        state.sessions.pop(sid)
        raise


SessionDep = Annotated[Session, Depends(get_session)]


async def get_admin(session: SessionDep) -> Session:
    if not session.is_admin:
        raise Forbidden("the operator views need the realm role iot-admin")
    return session


AdminDep = Annotated[Session, Depends(get_admin)]

# A page's free-text filter or search: at most 64 characters, as long as the longest device id.
TextFilter = Annotated[str | None, Query(max_length=64)]


def filter_value(name: str, value: str | None, allowed: re.Pattern[str], says: str) -> str | None:
    """A filter as typed, stripped; None when empty; BadInput (`name: says`) when `allowed` does
    not match it."""
    value = (value or "").strip() or None
    if value is not None and not allowed.match(value):
        raise BadInput(f"{name}: {says}")
    return value
