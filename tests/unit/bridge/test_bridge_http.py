"""The bridge's /metrics and /health endpoint on a real socket (no other services)."""

from __future__ import annotations

import asyncio
import signal
import socket

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter

from bridge.errors import BridgeError
from bridge.http import serve


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_metrics_health_and_not_found() -> None:
    registry = CollectorRegistry()
    Counter("things", "things counted", registry=registry).inc(3)
    healthy = {"ok": True}
    port = free_port()
    server = await serve("127.0.0.1", port, registry,
                         lambda: (healthy["ok"], {"mqtt": "connected"}))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            metrics = await client.get("/metrics")
            assert metrics.status_code == 200 and "things_total 3.0" in metrics.text
            health = await client.get("/health?verbose=1")
            assert health.status_code == 200
            assert health.json() == {"status": "ok", "mqtt": "connected"}
            healthy["ok"] = False
            assert (await client.get("/health")).status_code == 503
            missing = await client.get("/nothing")
            assert missing.status_code == 404 and missing.json() == {"error": "not found"}
    finally:
        server.close()
        await server.wait_closed()


async def test_the_server_leaves_sigterm_to_the_bridge() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        server = await serve("127.0.0.1", free_port(), CollectorRegistry(), lambda: (True, {}))
        signal.raise_signal(signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), 2)
        server.close()
        await server.wait_closed()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


async def test_a_port_in_use_is_a_bridge_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(BridgeError, match="cannot listen"):
            await serve("127.0.0.1", taken.getsockname()[1], CollectorRegistry(), lambda: (True, {}))
