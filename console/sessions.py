"""Server-side sessions: the browser holds only a random id in an HttpOnly, SameSite cookie.

Tokens stay in this process. Both stores are bounded (least recently used first out) and expire
idle entries, so a flood of sign-in attempts costs a fixed amount of memory.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Generic, TypeVar

COOKIE_NAME = "iot_console"


@dataclass(slots=True)
class PendingLogin:
    """A sign-in sent to Keycloak and not back yet: what the callback must match."""

    state: str
    code_verifier: str
    nonce: str
    next_path: str


@dataclass(slots=True)
class Session:
    access_token: str
    refresh_token: str | None
    id_token: str | None
    access_expires_at: float
    username: str
    tenant: str | None
    is_admin: bool
    # Sent back by the sign-out form: a cross-site POST cannot know it.
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(24))


T = TypeVar("T")


class BoundedStore(Generic[T]):
    def __init__(self, max_entries: int, idle_s: float) -> None:
        self._max = max_entries
        self._idle_s = idle_s
        self._entries: OrderedDict[str, tuple[T, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, value: T) -> str:
        key = secrets.token_urlsafe(32)
        self._entries[key] = (value, time.monotonic())
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return key

    def get(self, key: str | None) -> T | None:
        if not key:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        value, used = entry
        now = time.monotonic()
        if now - used > self._idle_s:
            del self._entries[key]
            return None
        self._entries[key] = (value, now)
        self._entries.move_to_end(key)
        return value

    def pop(self, key: str | None) -> T | None:
        if not key:
            return None
        entry = self._entries.pop(key, None)
        return entry[0] if entry is not None else None


class SessionStore(BoundedStore[Session]):
    """Signed-in sessions by cookie value."""


class PendingLogins(BoundedStore[PendingLogin]):
    """Sign-ins in flight by cookie value; one use each (popped by the callback)."""
