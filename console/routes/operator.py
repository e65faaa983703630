"""The operator views (realm role iot-admin): pipeline health, dead letters, Kafka, Cassandra."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request, Response

from console.deps import AdminDep, StateDep, TextFilter, filter_value

router = APIRouter(prefix="/ops")

_FILTER = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
DLQ_SHOWN = 200


def _filter(name: str, value: str | None) -> str | None:
    return filter_value(name, value, _FILTER, "letters, digits and . _ : - only, at most 64")


@router.get("/health")
async def health(request: Request, state: StateDep, session: AdminDep) -> Response:
    figures = await state.ops.health(state.http)
    return state.templates.TemplateResponse(request, "ops_health.html", {"session": session, "h": figures})


@router.get("/dlq")
async def dead_letters(
    request: Request,
    state: StateDep,
    session: AdminDep,
    reason: TextFilter = None,
    device: TextFilter = None,
) -> Response:
    reason, device = _filter("reason", reason), _filter("device", device)
    letters = await state.ops.dead_letters()
    reasons = sorted({letter.reason for letter in letters})
    shown = [
        letter
        for letter in letters
        if (reason is None or letter.reason == reason) and (device is None or letter.device == device)
    ]
    return state.templates.TemplateResponse(
        request,
        "ops_dlq.html",
        {
            "session": session,
            "letters": shown[:DLQ_SHOWN],
            "matched": len(shown),
            "scanned": len(letters),
            "reasons": reasons,
            "reason": reason or "",
            "device": device or "",
        },
    )


@router.get("/kafka")
async def kafka(request: Request, state: StateDep, session: AdminDep) -> Response:
    topics, groups = await state.ops.topics()
    return state.templates.TemplateResponse(
        request, "ops_kafka.html", {"session": session, "topics": topics, "groups": groups}
    )


@router.get("/cassandra")
async def cassandra(
    request: Request,
    state: StateDep,
    session: AdminDep,
    device: TextFilter = None,
) -> Response:
    device = _filter("device", device)
    tables = await state.ops.tables()
    rows = await state.ops.device_rows(device) if device else None
    return state.templates.TemplateResponse(
        request,
        "ops_cassandra.html",
        {"session": session, "tables": tables, "device": device or "", "rows": rows},
    )
