"""Settings of the web console (environment variables prefixed IOT_), validated at start-up."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import SettingsConfigDict

from gateway import endpoints
from gateway.settings import CassandraConnection, KafkaConnection, KeycloakConnection

PACKAGE_DIR = Path(__file__).resolve().parent
# Browser libraries from npm (console/frontend/package-lock.json), installed by `make up`.
DEFAULT_ASSETS_DIR = PACKAGE_DIR / "frontend" / "node_modules"


class ConsoleSettings(KeycloakConnection, KafkaConnection, CassandraConnection):
    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    console_host: str = endpoints.HOST
    # Shares IOT_CONSOLE_PORT with the stack runner's settings on purpose.
    console_port: int = endpoints.CONSOLE_PORT
    # The address browsers use: the OIDC redirect URI is built from it and must be one the
    # realm's iot-console client lists.
    console_public_url: str | None = None
    console_client_id: str = "iot-console"
    # A confidential client's secret; the realm's iot-console is public and relies on PKCE.
    console_client_secret: SecretStr | None = None

    # Where browsers reach Keycloak, when not under keycloak_url (a container network).
    keycloak_public_url: str | None = None

    query_api_url: str = f"http://{endpoints.HOST}:{endpoints.QUERY_API_PORT}"
    bridge_metrics_url: str = f"http://{endpoints.HOST}:{endpoints.BRIDGE_METRICS_PORT}/metrics"
    writer_metrics_url: str = f"http://{endpoints.HOST}:{endpoints.WRITER_METRICS_PORT}/metrics"

    # The health view's component rows: the stack runner's status, asked of its command line (the
    # console does not import the runner). Elsewhere, a command printing the same JSON list.
    console_status_command: list[str] = [sys.executable, "-m", "stack.cli", "status", "--json"]

    console_assets_dir: Path = DEFAULT_ASSETS_DIR
    # A signed-in session ends after this long without a request, and at the latest when
    # Keycloak refuses to refresh its tokens (the realm's SSO session limits).
    session_idle_s: float = 1800.0
    # Bounded memory: the least recently used session goes first past this many.
    session_max: int = 2000
    # Sign-ins started but not finished (the browser is at Keycloak's login page).
    login_pending_max: int = 1000
    login_pending_s: float = 600.0
    # Set behind TLS: the session cookie is then sent over https only.
    cookie_secure: bool = False
    http_timeout_s: float = 5.0
    # Device list page size; the last-minute count costs one query API call per row.
    devices_page_size: int = 25
    # Operator views read Kafka and Cassandra; their answers are reused this long.
    ops_cache_s: float = 3.0
    dlq_scan_per_partition: int = 500
    access_log: bool = False

    @property
    def public_url(self) -> str:
        return (self.console_public_url or f"http://{self.console_host}:{self.console_port}").rstrip("/")

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_url}/auth/callback"

    @property
    def public_realm_url(self) -> str:
        base = (self.keycloak_public_url or self.keycloak_url).rstrip("/")
        return f"{base}/realms/{self.keycloak_realm}"
