"""The query API's one root exception; library errors are translated into these at the edge."""

from __future__ import annotations

from enum import StrEnum

from gateway import http_errors


class QueryApiError(http_errors.HttpError):
    """Root of everything the API raises on purpose; `status` is the HTTP answer."""


class BadInput(QueryApiError, http_errors.BadInput):
    """A parameter out of its range or form."""


class NotFound(QueryApiError, http_errors.NotFound):
    """No such device, group or window (another tenant's looks the same)."""


class DependencyDown(QueryApiError, http_errors.Unavailable):
    """Cassandra or Keycloak did not answer; the caller may retry."""


class AuthFailure(StrEnum):
    """Why a request got a 401; a label of the auth-failures metric."""

    MISSING_TOKEN = "missing_token"
    MALFORMED = "malformed_token"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    WRONG_ISSUER = "wrong_issuer"
    WRONG_AUDIENCE = "wrong_audience"
    # An ID or refresh token: Keycloak signs them with the same keys as access tokens.
    WRONG_TOKEN_TYPE = "wrong_token_type"
    # An access token another client of the realm obtained (`azp`), whatever its audience.
    WRONG_CLIENT = "wrong_client"
    MISSING_CLAIM = "missing_claim"
    NO_TENANT = "no_tenant"


class Unauthorized(QueryApiError, http_errors.Unauthenticated):
    def __init__(self, reason: AuthFailure, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
