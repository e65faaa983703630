"""The console's one root exception; library errors are translated into these at the edge."""

from __future__ import annotations


class ConsoleError(Exception):
    """Root of everything the console raises on purpose; `status` is the HTTP answer."""

    status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class SignedOut(ConsoleError):
    """No session, or its tokens can no longer be refreshed: sign in again."""

    status = 401


class Forbidden(ConsoleError):
    status = 403


class NotFound(ConsoleError):
    status = 404


class BadInput(ConsoleError):
    status = 400


class Upstream(ConsoleError):
    """Keycloak, the query API, Kafka or Cassandra did not answer usefully."""

    status = 503
