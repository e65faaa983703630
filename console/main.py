"""The FastAPI application of the console: factory, lifespan (HTTP client, sessions), errors."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from urllib.parse import quote

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from console.config import PACKAGE_DIR, ConsoleSettings
from console.errors import BadInput, ConsoleError, SignedOut
from console.observability import ConsoleMetrics
from console.oidc import KeycloakClient
from console.ops.service import Operations
from console.query_client import QueryApi
from console.routes import auth, operator, tenant
from console.sessions import COOKIE_NAME, PendingLogins, SessionStore
from console.state import ConsoleState
from gateway.app_metrics import route_template

log = logging.getLogger(__name__)

# Every script and style comes from this origin; nothing is loaded from the internet.
_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self' {keycloak}"
)


def create_app(settings: ConsoleSettings | None = None) -> FastAPI:
    settings = settings or ConsoleSettings()
    templates = Jinja2Templates(directory=PACKAGE_DIR / "templates")
    templates.env.filters["utc"] = _utc

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("console settings: %s", settings.model_dump(exclude={"console_client_secret"}))
        async with httpx.AsyncClient(
            timeout=settings.http_timeout_s,
            limits=httpx.Limits(max_connections=50, max_keepalive_connections=20),
        ) as http:
            ops = Operations(settings)
            sessions = SessionStore(settings.session_max, settings.session_idle_s)
            metrics.watch_sessions(lambda: len(sessions))
            app.state.console = ConsoleState(
                settings=settings,
                http=http,
                keycloak=KeycloakClient(settings, http),
                query_api=QueryApi(settings.query_api_url, http),
                sessions=sessions,
                metrics=metrics,
                pending=PendingLogins(settings.login_pending_max, settings.login_pending_s),
                templates=templates,
                ops=ops,
            )
            log.info("console at %s (sign-in through %s)", settings.public_url, settings.public_realm_url)
            try:
                yield
            finally:
                await asyncio.to_thread(ops.close)
                log.info("console stopped")

    app = FastAPI(title="IoT console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ConsoleMetrics()
    csp = _CSP.format(keycloak=settings.public_realm_url.split("/realms/")[0])

    @app.middleware("http")
    async def security_headers(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        # The route template, never the raw path: device ids must not become label values.
        view = route_template(
            request.scope, "static" if request.url.path.startswith(("/static/", "/vendor/")) else "unmatched"
        )
        metrics.requests.labels(view, str(response.status_code)).inc()
        metrics.latency.labels(view).observe(time.perf_counter() - started)
        response.headers.setdefault("Content-Security-Policy", csp)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if not request.url.path.startswith(("/static/", "/vendor/")):
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    app.add_exception_handler(ConsoleError, _error_handler(templates))  # type: ignore[arg-type]

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        # Pages answer a malformed id or parameter with the console's own page, /api with JSON.
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("path", "query"))
        detail = f"{where}: {first.get('msg', 'invalid')}" if where else "invalid request"
        return await _error_handler(templates)(request, BadInput(detail))

    app.mount("/static", StaticFiles(directory=PACKAGE_DIR / "static"), name="static")
    uplot = settings.console_assets_dir / "uplot" / "dist"
    # check_dir=False: a console started before `make up` built the assets still serves its pages.
    app.mount("/vendor/uplot", StaticFiles(directory=uplot, check_dir=False), name="uplot")
    if not uplot.is_dir():
        log.warning("chart library missing at %s: run `make up` (npm ci in console/frontend)", uplot)
    app.include_router(auth.router)
    app.include_router(tenant.router)
    app.include_router(operator.router)
    return app


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _error_handler(
    templates: Jinja2Templates,
) -> Callable[[Request, ConsoleError], Awaitable[Response]]:
    async def handle(request: Request, exc: ConsoleError) -> Response:
        wants_json = request.url.path.startswith("/api/")
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
        if wants_json:
            return JSONResponse(
                {"detail": exc.detail, "signedOut": isinstance(exc, SignedOut)}, status_code=exc.status
            )
        # A failed sign-in itself is shown, not retried: that could loop through Keycloak.
        if (
            isinstance(exc, SignedOut)
            and request.method == "GET"
            and not request.url.path.startswith("/auth/")
        ):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        # The page keeps its navigation when the browser is still signed in.
        state: ConsoleState | None = getattr(request.app.state, "console", None)
        session = state.sessions.get(request.cookies.get(COOKIE_NAME)) if state is not None else None
        return templates.TemplateResponse(
            request,
            "error.html",
            {"status": exc.status, "detail": exc.detail, "session": session},
            status_code=exc.status,
        )

    return handle
