"""The query API's one root exception; library errors are translated into these at the edge."""

from __future__ import annotations

from enum import StrEnum


class QueryApiError(Exception):
    """Root of everything the API raises on purpose; `status` is the HTTP answer."""

    status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadInput(QueryApiError):
    status = 400


class NotFound(QueryApiError):
    status = 404


class DependencyDown(QueryApiError):
    """Cassandra or Keycloak did not answer; the caller may retry."""

    status = 503


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


class Unauthorized(QueryApiError):
    status = 401

    def __init__(self, reason: AuthFailure, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
