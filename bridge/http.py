"""`GET /metrics` (Prometheus text) and `GET /health` (JSON) on the bridge's own port.

A few lines of asyncio instead of a web framework: two fixed routes, no request bodies.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, object]]]


async def serve(
    host: str, port: int, registry: CollectorRegistry, health: HealthCheck
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5.0)
            path = request.split(b" ", 2)[1].split(b"?", 1)[0].decode(errors="replace")
            if path == "/metrics":
                status, ctype, body = 200, CONTENT_TYPE_LATEST, generate_latest(registry)
            elif path == "/health":
                ok, detail = health()
                status, ctype = (200 if ok else 503), "application/json"
                body = json.dumps({"status": "ok" if ok else "degraded", **detail}).encode()
            else:
                status, ctype, body = 404, "application/json", b'{"error":"not found"}'
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, IndexError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics and health on http://%s:%d/metrics, /health", host, port)
    return server
