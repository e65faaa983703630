"""The same query, asked again within a moment, answered before FastAPI routes it.

Dashboards poll one URL per device many times a second. Routing, parameter validation and
dependency resolution cost twice as much CPU as the rest of such a request, and their outcome for
a URL seen moments ago is already known. This ASGI middleware keeps the body of each 200 answer
to `GET /query/...` for `ttl_s`, keyed by the exact path and query string, and serves it again
to a caller that passes the same checks the route makes:

- its bearer token is one the validator already accepted and has not expired
  (TokenValidator.known: no signature work, nothing that could accept a token the route refused);
- its tenant may read the device's tenant (the registry lookup is the repository's, cached).

Anything else (no token, an unknown or expired token, another tenant, a miss, an expired entry)
goes down the full route, which is the only place that produces answers. An answer is at most
`ttl_s` older than the route's, which is itself at most `2 * ttl_s` behind Cassandra
(result_cache.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from query_api.errors import QueryApiError
from query_api.state import AppState

_PREFIX = "/query/"
_Key = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class _Answer:
    device_id: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    route: object
    expires: float


class HotAnswers:
    def __init__(self, app: ASGIApp, ttl_s: float, max_entries: int, max_bytes: int) -> None:
        self.app = app
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._answers: OrderedDict[_Key, _Answer] = OrderedDict()
        self.hits = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._ttl_s <= 0 or scope["type"] != "http" or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            await self.app(scope, receive, send)
            return
        key = (path, scope["query_string"])
        answer = self._answers.get(key)
        if answer is not None and await self._may_serve(scope, answer):
            self.hits += 1
            # The metrics middleware labels requests by route template: keep that label.
            scope["route"] = answer.route
            await send({"type": "http.response.start", "status": 200, "headers": answer.headers})
            await send({"type": "http.response.body", "body": answer.body})
            return
        await self._route_and_keep(key, scope, receive, send)

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

    async def _route_and_keep(self, key: _Key, scope: Scope, receive: Receive, send: Send) -> None:
        start: Message | None = None
        chunks: list[bytes] = []

        async def keep(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                start = message
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, keep)
        if start is None or start["status"] != 200:
            return
        body = b"".join(chunks)
        if len(body) > self._max_bytes:
            return
        device_id = key[0][len(_PREFIX) :].split("/", 1)[0]
        self._answers[key] = _Answer(
            device_id,
            list(start.get("headers", [])),
            body,
            scope.get("route"),
            time.monotonic() + self._ttl_s,
        )
        self._answers.move_to_end(key)
        while len(self._answers) > self._max_entries:
            self._answers.popitem(last=False)


def _bearer_token(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            token = token.strip()
            return token if scheme.lower() == "bearer" and token else None
    return None
