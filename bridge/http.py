"""`GET /metrics` (Prometheus text) and `GET /health` (JSON) on the bridge's own port.

A two-route Starlette app on uvicorn, served inside the bridge's event loop: the HTTP parsing is
a maintained server's, not ours. uvicorn is kept away from the signals: SIGTERM belongs to the
bridge, which drains Kafka before anything stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Iterator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bridge.errors import BridgeError

log = logging.getLogger(__name__)

HealthCheck = Callable[[], tuple[bool, dict[str, object]]]


class _EmbeddedServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the bridge's own handlers stay in place


class HttpServer:
    """The running server; `close` then `wait_closed`, as for an asyncio.Server."""

    def __init__(self, server: uvicorn.Server, task: asyncio.Task[None]) -> None:
        self._server = server
        self._task = task

    def close(self) -> None:
        self._server.should_exit = True

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError, SystemExit):
            await self._task


def app(registry: CollectorRegistry, health: HealthCheck) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def health_route(request: Request) -> Response:
        ok, detail = health()
        return JSONResponse({"status": "ok" if ok else "degraded", **detail},
                            status_code=200 if ok else 503)

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        return JSONResponse({"error": "not found" if status == 404 else "error"}, status_code=status)

    return Starlette(
        routes=[Route("/metrics", metrics), Route("/health", health_route)],
        exception_handlers={HTTPException: not_found},
    )


async def serve(
    host: str, port: int, registry: CollectorRegistry, health: HealthCheck
) -> HttpServer:
    config = uvicorn.Config(
        app(registry, health), host=host, port=port, lifespan="off", access_log=False,
        log_config=None, log_level="warning", server_header=False,
    )
    server = _EmbeddedServer(config)
    # Bound here: on a port in use uvicorn would exit the process (SystemExit) from its task.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise BridgeError(f"metrics and health endpoint cannot listen on {host}:{port}: {exc}") from exc
    task = asyncio.get_running_loop().create_task(server.serve([sock]), name="http")
    while not server.started and not task.done():  # noqa: ASYNC110 (uvicorn sets a plain flag)
        await asyncio.sleep(0.01)
    if task.done():
        task.result()
        raise BridgeError(f"metrics and health endpoint on {host}:{port} stopped at start-up")
    log.info("metrics and health on http://%s:%d/metrics, /health", host, port)
    return HttpServer(server, task)
