"""The tenant views: the device list and a device's page, and the JSON its charts read.

Every read goes to the query API with the signed-in user's access token, so which devices a
user sees is decided there and only there.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import JSONResponse

from console.deps import SessionDep, StateDep, TextFilter, filter_value
from console.series import Range, columns, last_minute_count, pick_range
from gateway.contract import DEVICE_ID_PATTERN

router = APIRouter()

DeviceId = Annotated[str, Path(alias="deviceId", pattern=DEVICE_ID_PATTERN)]
_SEARCH = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@router.get("/devices")
async def device_list(
    request: Request,
    state: StateDep,
    session: SessionDep,
    q: TextFilter = None,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    search = filter_value("search", q, _SEARCH, "letters, digits, '-' and '_' only")
    page = await state.query_api.devices(
        session.access_token, state.settings.devices_page_size, cursor, search
    )
    items: list[dict[str, Any]] = page.get("items", [])
    now_ms = int(time.time() * 1000)
    counts = await asyncio.gather(
        *(
            state.query_api.windows(session.access_token, item["deviceId"], "1m", now_ms - 180_000, now_ms)
            for item in items
        ),
        return_exceptions=True,
    )
    for item, windows in zip(items, counts, strict=True):
        item["lastMinute"] = None if isinstance(windows, BaseException) else last_minute_count(windows)
    return state.templates.TemplateResponse(
        request,
        "devices.html",
        {"session": session, "items": items, "next": page.get("next"), "q": search or "", "cursor": cursor},
    )


@router.get("/devices/{deviceId}")
async def device_page(
    request: Request, state: StateDep, session: SessionDep, device_id: DeviceId
) -> Response:
    # Another tenant's device answers as an unknown one: the query API's 404 becomes ours.
    summary = await state.query_api.windows(session.access_token, device_id, "all")
    return state.templates.TemplateResponse(
        request,
        "device.html",
        {"session": session, "device_id": device_id, "summary": summary},
    )


@router.get("/api/devices/{deviceId}/series")
async def series(
    state: StateDep,
    session: SessionDep,
    device_id: DeviceId,
    range_: Annotated[Range, Query(alias="range")] = Range.HOUR,
    from_: Annotated[int | None, Query(alias="from", ge=0, le=253_402_300_799_999)] = None,
    to: Annotated[int | None, Query(ge=0, le=253_402_300_799_999)] = None,
) -> JSONResponse:
    """A device's windows over the range as columns per metric, the shape uPlot draws."""
    window, start_ms, end_ms = pick_range(range_, from_, to, int(time.time() * 1000))
    items = await state.query_api.windows(session.access_token, device_id, window, start_ms, end_ms)
    return JSONResponse({"window": window, "from": start_ms, "to": end_ms, "metrics": columns(items)})


@router.get("/api/devices/{deviceId}/summary")
async def summary(state: StateDep, session: SessionDep, device_id: DeviceId) -> JSONResponse:
    return JSONResponse({"items": await state.query_api.windows(session.access_token, device_id, "all")})
