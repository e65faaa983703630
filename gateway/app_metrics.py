"""Prometheus metrics of one application, kept in a registry of its own (tests build many apps in
one process; a registry shared between them would refuse the second app's metrics), and the
label every HTTP service gives a request: its route template, never the raw path, so that ids in
paths cannot multiply the series.

    class ApiMetrics(AppMetrics):
        def __init__(self) -> None:
            super().__init__()
            self.requests = self.counter("api_requests", "HTTP requests", ["route", "status"])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class AppMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, documentation, labels, registry=self.registry)

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(name, documentation, labels, buckets=buckets, registry=self.registry)


def route_template(scope: Mapping[str, Any], unmatched: str = "unmatched") -> str:
    """The path template of the route that answered (`/devices/{deviceId}`), or `unmatched`."""
    return getattr(scope.get("route"), "path", None) or unmatched
