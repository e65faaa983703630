"""Settings of the query API (environment variables prefixed IOT_), validated at start-up."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gateway import endpoints
from gateway.settings import CassandraConnection, KeycloakConnection


class QueryApiSettings(KeycloakConnection, CassandraConnection):
    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    # Shares IOT_QUERY_API_PORT / IOT_CASSANDRA_PORT with the stack runner's settings on purpose.
    query_api_host: str = endpoints.HOST
    query_api_port: int = endpoints.QUERY_API_PORT

    keycloak_client_id: str = endpoints.KEYCLOAK_CLIENT_ID
    # Clients whose access tokens (`azp`) this API accepts, comma-separated, besides carrying
    # keycloak_client_id in `aud`: its own and the web console's (both have that audience
    # mapper). A token of any other client is refused, even one a careless mapper gave our
    # audience.
    keycloak_accepted_clients: str = f"{endpoints.KEYCLOAK_CLIENT_ID},iot-console"
    # Keycloak stamps `iss` with the host the token was requested from; set this when clients
    # reach Keycloak under another name than keycloak_url.
    keycloak_issuer: str | None = None
    # An unknown key id triggers a JWKS refetch, but never more often than this (a flood of
    # forged kids must not turn into a flood of calls to Keycloak).
    jwks_min_refresh_s: float = 10.0
    jwks_timeout_s: int = 5

    # Connection in gateway.settings; a read waits less than a batch write.
    cassandra_timeout_s: float = Field(default=5.0, gt=0, validation_alias="IOT_CASSANDRA_TIMEOUT_S")
    # "loop": the driver's sockets are transports of the API's asyncio loop (no reactor thread,
    # no hand-off per read: loop_connection.py); "libev": the driver's own reactor thread.
    cassandra_reactor: Literal["loop", "libev"] = "libev"

    # device -> tenant answers are cached; a device's tenant never changes, but a new device
    # must become visible quickly, so misses are cached for a much shorter time.
    registry_cache_s: float = 60.0
    registry_miss_cache_s: float = 1.0
    # Answers are kept this long (0: off) and reused for identical reads: a window row is
    # written once, so this only delays a new row, by at most 3x this (result_cache.py,
    # hot_answers.py).
    result_cache_s: float = 0.5
    # Bounds of each of the two caches: answers kept, and the largest answer worth keeping (a
    # full page of 10,000 rows is about 1 MiB; polls of the last hour are about 20 KiB).
    result_cache_entries: int = 1_000
    result_cache_max_bytes: int = 256 * 1024
    # ...and the bytes each of them may hold in all, whatever the number of entries: distinct
    # ranges, limits and cursors are endless, memory is not.
    result_cache_budget_bytes: int = 32 * 1024 * 1024
    # Access log lines cost as much as the query at 1,000s of requests/s; metrics count instead.
    access_log: bool = False

    @property
    def issuer(self) -> str:
        return self.keycloak_issuer or self.realm_url

    @property
    def accepted_clients(self) -> frozenset[str]:
        return frozenset(c.strip() for c in self.keycloak_accepted_clients.split(",") if c.strip())
