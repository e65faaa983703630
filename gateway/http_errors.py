"""The HTTP services' errors (query API, console): raised on purpose, each with its HTTP status,
its message the answer's detail. A service roots its own errors in a class of its own and takes
the status from these: `class NotFound(ConsoleError, http_errors.NotFound)`."""

from __future__ import annotations


class HttpError(Exception):
    status: int = 500

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadInput(HttpError):
    status = 400


class Unauthenticated(HttpError):
    status = 401


class Forbidden(HttpError):
    status = 403


class NotFound(HttpError):
    status = 404


class Unavailable(HttpError):
    """A dependency did not answer; the caller may retry."""

    status = 503
