"""The console's Prometheus metrics (GET /metrics): requests, sign-ins, sessions held."""

from __future__ import annotations

from collections.abc import Callable

from gateway.app_metrics import AppMetrics


class ConsoleMetrics(AppMetrics):
    def __init__(self) -> None:
        super().__init__()
        self.requests = self.counter(
            "console_requests_total", "Requests by view (route template) and status code", ["view", "status"]
        )
        self.latency = self.histogram(
            "console_request_seconds", "Time to answer, by view", ["view"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
        )
        self.sign_ins = self.counter("console_sign_ins_total", "Finished sign-ins by outcome", ["outcome"])
        self.sign_outs = self.counter("console_sign_outs_total", "Sign-outs")
        self._sessions = self.gauge("console_sessions", "Signed-in sessions held")

    def watch_sessions(self, count: Callable[[], int]) -> None:
        self._sessions.set_function(lambda: float(count()))
