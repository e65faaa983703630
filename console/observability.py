"""The console's Prometheus metrics (GET /metrics): requests, sign-ins, sessions held."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ConsoleMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "console_requests_total",
            "Requests by view (route template) and status code",
            ["view", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "console_request_seconds",
            "Time to answer, by view",
            ["view"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.sign_ins = Counter(
            "console_sign_ins_total", "Finished sign-ins by outcome", ["outcome"], registry=self.registry
        )
        self.sign_outs = Counter("console_sign_outs_total", "Sign-outs", registry=self.registry)
        self._sessions = Gauge("console_sessions", "Signed-in sessions held", registry=self.registry)

    def watch_sessions(self, count: Callable[[], int]) -> None:
        self._sessions.set_function(lambda: float(count()))
