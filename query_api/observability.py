"""Prometheus metrics of the API: requests, latency, auth failures by reason.

A pure ASGI middleware (not BaseHTTPMiddleware, which costs a task per request) labels each
request with its route template, never the raw path, so device ids do not explode cardinality.
"""

from __future__ import annotations

import time
from typing import Protocol

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.app_metrics import AppMetrics, route_template

_LATENCY_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ApiMetrics(AppMetrics):
    """One registry per app, so tests can build many apps in one process."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = self.counter(
            "query_api_requests", "HTTP requests handled", ["method", "route", "status"]
        )
        self.latency = self.histogram(
            "query_api_request_duration_seconds", "Time to answer a request", ["route"],
            buckets=_LATENCY_BUCKETS,
        )
        # Set by the caches themselves (a callback per cache, read at each scrape).
        self.cache_entries = self.gauge(
            "query_api_cache_entries", "Answers kept, by cache", ["cache"]
        )
        self.cache_bytes = self.gauge(
            "query_api_cache_bytes", "Bytes held by each cache (estimated)", ["cache"]
        )
        self.auth_failures = self.counter(
            "query_api_auth_failures", "Requests refused with 401, by reason", ["reason"]
        )

    def watch_cache(self, name: str, cache: SizedCache) -> None:
        self.cache_entries.labels(name).set_function(lambda: cache.entries)
        self.cache_bytes.labels(name).set_function(lambda: cache.bytes)


class SizedCache(Protocol):
    @property
    def entries(self) -> int: ...

    bytes: int


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            template = route_template(scope)
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - started)
