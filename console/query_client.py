"""The query API, called with the signed-in user's access token: tenant isolation stays there."""

from __future__ import annotations

import logging
from typing import Any

import httpx

from console.errors import BadInput, NotFound, SignedOut, Upstream

log = logging.getLogger(__name__)

# Pages followed for one chart at most: a week of 1h windows or a day of 1m ones fit in one.
_MAX_PAGES = 5


class QueryApi:
    def __init__(self, base_url: str, http: httpx.AsyncClient) -> None:
        self._base = base_url.rstrip("/")
        self._http = http

    async def get(self, token: str, path: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        try:
            response = await self._http.get(
                f"{self._base}{path}",
                params=params,
                headers={"Authorization": f"Bearer {token}"},
            )
        except httpx.HTTPError as exc:
            raise Upstream(f"query API unreachable ({exc.__class__.__name__})") from exc
        if response.status_code == 200:
            body: dict[str, Any] = response.json()
            return body
        detail = _detail(response)
        if response.status_code == 401:
            raise SignedOut(f"the query API refused the session's token: {detail}")
        if response.status_code == 404:
            raise NotFound(detail)
        if response.status_code in (400, 422):
            raise BadInput(f"the query API rejected the request: {detail}")
        log.warning("query API %s: HTTP %d %s", path, response.status_code, detail)
        raise Upstream(f"query API answered HTTP {response.status_code}: {detail}")

    async def devices(self, token: str, limit: int, cursor: str | None, q: str | None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if cursor:
            params["cursor"] = cursor
        if q:
            params["q"] = q
        return await self.get(token, "/devices", params)

    async def windows(
        self, token: str, device_id: str, window: str, start_ms: int | None = None, end_ms: int | None = None
    ) -> list[dict[str, Any]]:
        """Every item of a device's window query over [start_ms, end_ms), following `next`."""
        params: dict[str, Any] = {}
        if start_ms is not None:
            params["from"] = start_ms
        if end_ms is not None:
            params["to"] = end_ms
        items: list[dict[str, Any]] = []
        for _ in range(_MAX_PAGES):
            body = await self.get(token, f"/query/{device_id}/{window}", params)
            items.extend(body.get("items", []))
            cursor = body.get("next")
            if not cursor:
                break
            params["cursor"] = cursor
        return items


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    detail = body.get("detail") if isinstance(body, dict) else body
    return str(detail)[:300]
