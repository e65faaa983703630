"""What the lifespan opens once and the routes share: the session, the repository, the keys."""

from __future__ import annotations

from dataclasses import dataclass

from query_api.auth import JwksCache, TokenValidator
from query_api.config import QueryApiSettings
from query_api.db import CassandraStore
from query_api.observability import ApiMetrics
from query_api.repository import AggregateReader


@dataclass
class AppState:
    settings: QueryApiSettings
    metrics: ApiMetrics
    jwks: JwksCache
    validator: TokenValidator
    repository: AggregateReader
    # None when the repository is not backed by Cassandra (unit tests).
    store: CassandraStore | None
