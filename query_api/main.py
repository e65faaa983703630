"""The FastAPI application: factory, lifespan (Cassandra session, JWKS cache), error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from gateway.retry import Backoff, retry_async
from query_api.auth import JwksCache, JwksFetcher, TokenValidator, keycloak_fetcher
from query_api.bounded import CacheLimits
from query_api.config import QueryApiSettings
from query_api.db import CassandraStore
from query_api.errors import QueryApiError, Unauthorized
from query_api.hot_answers import HotAnswers
from query_api.observability import ApiMetrics, MetricsMiddleware
from query_api.repository import AggregateReader, AggregateRepository
from query_api.result_cache import CachedReader
from query_api.routes import devices, docs, groups, health, metrics, query
from query_api.state import AppState

log = logging.getLogger(__name__)


async def _keep_connecting(store: CassandraStore, repository: AggregateRepository) -> None:
    """Connect and prepare, retrying with jittered backoff: the API may start before Cassandra."""

    async def attempt() -> None:
        if not store.connected:
            await store.connect()
        await repository.prepare()

    def told(exc: BaseException, delay: float) -> None:
        log.warning("Cassandra not usable yet (%s); retrying in %.1fs", exc, delay)

    await retry_async(attempt, (QueryApiError,), Backoff(initial_s=0.5, max_s=15.0), on_retry=told)


def create_app(
    settings: QueryApiSettings | None = None,
    *,
    repository: AggregateReader | None = None,
    jwks_fetcher: JwksFetcher | None = None,
) -> FastAPI:
    """The app; `repository` and `jwks_fetcher` replace Cassandra and Keycloak in unit tests."""
    settings = settings or QueryApiSettings()
    api_metrics = ApiMetrics()
    limits = CacheLimits.of(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("query API settings: %s", settings.model_dump())
        jwks = JwksCache(jwks_fetcher or keycloak_fetcher(settings), settings.jwks_min_refresh_s)
        store: CassandraStore | None = None
        connecting: asyncio.Task[None] | None = None
        reader: AggregateReader
        if repository is not None:
            reader = repository
        else:
            store = CassandraStore(settings)
            real = AggregateRepository(store, settings.registry_cache_s, settings.registry_miss_cache_s)
            connecting = asyncio.create_task(_keep_connecting(store, real))
            reader = real
        if limits.ttl_s > 0:
            reader = CachedReader(reader, limits, api_metrics)
        app.state.iot = AppState(
            settings=settings,
            metrics=api_metrics,
            jwks=jwks,
            validator=TokenValidator(settings, jwks),
            repository=reader,
            store=store,
        )
        # Keycloak may be down now: the cache refetches when the first token arrives.
        await jwks.refresh(force=True)
        if connecting is not None:
            # Serve once Cassandra answers, or after a few seconds anyway (503s, /health says why).
            await asyncio.wait({connecting}, timeout=settings.cassandra_timeout_s)
        # What start-up built (driver metadata, the app, the keys) lives as long as the process:
        # out of the collector's sight, a full collection stops scanning it on every request burst.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if connecting is not None:
                connecting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await connecting
            if store is not None:
                await asyncio.to_thread(store.close)
            log.info("query API stopped")

    app = FastAPI(
        title="IoT query API",
        summary="Aggregated telemetry per device, scoped by the caller's tenant.",
        version="1.0.0",
        lifespan=lifespan,
        docs_url=None,  # routes/docs.py serves Swagger UI from local files
    )
    # Added first, so it runs inside the metrics middleware: hot answers are counted too.
    app.add_middleware(HotAnswers, limits=limits, route=query.QUERY_ROUTE, metrics=api_metrics)
    app.add_middleware(MetricsMiddleware, metrics=api_metrics)
    app.add_exception_handler(QueryApiError, _error_handler(api_metrics))
    app.include_router(query.router)
    app.include_router(devices.router)
    app.include_router(groups.router)
    app.include_router(docs.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    return app


def _error_handler(api_metrics: ApiMetrics):  # type: ignore[no-untyped-def]
    async def handle(request: Request, exc: QueryApiError) -> JSONResponse:
        if isinstance(exc, Unauthorized):
            api_metrics.auth_failures.labels(exc.reason.value).inc()
            # RFC 6750: a missing token gets the bare challenge, a bad one says invalid_token.
            challenge = 'Bearer realm="iot"'
            if exc.reason.value != "missing_token":
                challenge += f', error="invalid_token", error_description="{exc.reason.value}"'
            return JSONResponse(
                {"detail": exc.detail, "reason": exc.reason.value},
                status_code=401,
                headers={"WWW-Authenticate": challenge},
            )
        if exc.status >= 500:
            log.warning("%s %s: %s", request.method, request.url.path, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status)

    return handle
