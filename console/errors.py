"""The console's one root exception; library errors are translated into these at the edge."""

from __future__ import annotations

from gateway import http_errors


class ConsoleError(http_errors.HttpError):
    """Root of everything the console raises on purpose; `status` is the HTTP answer."""


class SignedOut(ConsoleError, http_errors.Unauthenticated):
    """No session, or its tokens can no longer be refreshed: sign in again."""


class Forbidden(ConsoleError, http_errors.Forbidden):
    """Signed in, but not allowed this page."""


class NotFound(ConsoleError, http_errors.NotFound):
    """No such device or page."""


class BadInput(ConsoleError, http_errors.BadInput):
    """A parameter out of its range or form."""


class Upstream(ConsoleError, http_errors.Unavailable):
    """Keycloak, the query API, Kafka or Cassandra did not answer usefully."""
