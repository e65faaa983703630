"""What the lifespan opens once and the routes share."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from fastapi.templating import Jinja2Templates

from console.config import ConsoleSettings
from console.observability import ConsoleMetrics
from console.oidc import KeycloakClient
from console.ops.service import Operations
from console.query_client import QueryApi
from console.sessions import PendingLogins, SessionStore


@dataclass
class ConsoleState:
    settings: ConsoleSettings
    http: httpx.AsyncClient
    keycloak: KeycloakClient
    query_api: QueryApi
    sessions: SessionStore
    pending: PendingLogins
    templates: Jinja2Templates
    ops: Operations
    metrics: ConsoleMetrics
