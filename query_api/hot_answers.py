"""The same query, asked again within a moment, answered before FastAPI routes it.

Dashboards poll one URL per device many times a second. Routing, parameter validation and
dependency resolution cost twice as much CPU as the rest of such a request, and their outcome for
a URL seen moments ago is already known. This ASGI middleware keeps the body of each 200 answer
to `GET /query/...` for `ttl_s`, keyed by the path and the values of the query parameters the
route declares (the last one of each, as the route reads them): other parameters change nothing
in the answer and must not make new entries. It serves the body again to a caller that passes
the same checks the route makes:

- its bearer token is one the validator already accepted and has not expired
  (TokenValidator.known: no signature work, nothing that could accept a token the route refused);
- its tenant may read the device's tenant (the registry lookup is the repository's, cached).

Anything else (no token, an unknown or expired token, another tenant, a miss, an expired entry)
goes to the route, which is the only place that produces answers. The route is called from here
too, with FastAPI's own match of the path and its handler of QueryApiError: it declares nothing
for FastAPI to resolve (routes/query.py reads the request itself), so FastAPI's routing layers
would only add their CPU to the busiest path, every URL of a fleet being new. An answer is at most
`ttl_s` older than the route's, which is itself at most `2 * ttl_s` behind Cassandra
(result_cache.py). At most `max_entries` bodies and `budget_bytes` in all are kept, the least
recently kept going first; a body above `max_bytes` is not kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from query_api.bounded import BoundedLru, CacheLimits
from query_api.errors import QueryApiError
from query_api.observability import ApiMetrics
from query_api.state import AppState

_PREFIX = "/query/"
_Key = tuple[str, tuple[tuple[str, str], ...]]
# What an entry costs besides its body: headers, key, bookkeeping.
_ENTRY_BYTES = 500


@dataclass(frozen=True, slots=True)
class _Answer:
    device_id: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    route: object
    expires: float


class HotAnswers:
    def __init__(
        self, app: ASGIApp, limits: CacheLimits, route: APIRoute, metrics: ApiMetrics | None = None
    ) -> None:
        self.app = app
        # GET /query/{deviceId}/{window}: its handler takes the request and nothing else.
        self._query = route
        self._ttl_s = limits.ttl_s
        self._max_bytes = limits.max_bytes
        self.kept: BoundedLru[_Key, _Answer] = BoundedLru(limits)
        # name -> may repeat (a list parameter), of the query parameters of the /query routes.
        self._parameters: dict[str, bool] | None = None
        self.hits = 0
        if metrics is not None:
            metrics.watch_cache("answers", self.kept)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET" or not scope["path"].startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        if self._ttl_s <= 0:
            await self._route(scope, receive, send)
            return
        key = (scope["path"], self._known_parameters(scope))
        answer = self.kept.get(key)
        if answer is not None and await self._may_serve(scope, answer):
            self.hits += 1
            # The metrics middleware labels requests by route template: keep that label.
            scope["route"] = answer.route
            await send({"type": "http.response.start", "status": 200, "headers": answer.headers})
            await send({"type": "http.response.body", "body": answer.body})
            return
        response = await self._route(scope, receive, send)
        if response is not None and response.status_code == 200 and len(response.body) <= self._max_bytes:
            self._keep(key, scope, response)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> Response | None:
        """The /query route's answer, sent; None when it is not that route's path (FastAPI
        answers it: a 404, a 405)."""
        route = self._query
        match, child = route.matches(scope)
        if match is not Match.FULL:
            await self.app(scope, receive, send)
            return None
        scope.update(child)
        scope["route"] = route
        request = Request(scope, receive)
        try:
            response: Response = await route.endpoint(request)
        except QueryApiError as exc:
            response = await scope["app"].exception_handlers[QueryApiError](request, exc)
        await response(scope, receive, send)
        return response

    async def _may_serve(self, scope: Scope, answer: _Answer) -> bool:
        if answer.expires <= time.monotonic():
            return False
        state: AppState | None = getattr(scope["app"].state, "iot", None)
        token = _bearer_token(scope)
        if state is None or token is None:
            return False
        principal = state.validator.known(token)
        if principal is None:
            return False
        try:
            tenant = await state.repository.tenant_of(answer.device_id)
        except QueryApiError:
            return False
        return tenant is not None and principal.may_read(tenant)

    def _keep(self, key: _Key, scope: Scope, response: Response) -> None:
        device_id = key[0][len(_PREFIX) :].split("/", 1)[0]
        headers = response.raw_headers
        cost = len(response.body) + sum(len(n) + len(v) for n, v in headers) + _ENTRY_BYTES
        expires = time.monotonic() + self._ttl_s
        answer = _Answer(device_id, headers, bytes(response.body), scope.get("route"), expires)
        self.kept.keep(key, answer, cost)

    def _known_parameters(self, scope: Scope) -> tuple[tuple[str, str], ...]:
        """The query parameters the routes read, as they read them: the last value of each, or
        every value of a list parameter; sorted, so their order in the URL does not matter."""
        if not scope["query_string"]:
            return ()
        if self._parameters is None:
            self._parameters = _query_parameters(scope["app"].openapi())
        known = self._parameters
        last: dict[str, str] = {}
        repeated: list[tuple[str, str]] = []
        for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
            repeats = known.get(name)
            if repeats:
                repeated.append((name, value))
            elif repeats is not None:
                last[name] = value
        return tuple(sorted(last.items())) + tuple(repeated)


def _query_parameters(openapi: dict[str, Any]) -> dict[str, bool]:
    """Query parameters of the /query routes in the OpenAPI document: name -> is a list."""
    found: dict[str, bool] = {}
    for path, operations in openapi.get("paths", {}).items():
        if not path.startswith(_PREFIX):
            continue
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") != "query":
                    continue
                schema = parameter.get("schema", {})
                types = [schema, *schema.get("anyOf", [])]
                is_list = any(t.get("type") == "array" for t in types)
                found[parameter["name"]] = found.get(parameter["name"], False) or is_list
    return found


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None
