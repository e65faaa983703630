"""Response shapes of docs/contract.md "Query API", for the OpenAPI document.

The routes serialise plain dicts themselves (one orjson call instead of a model per item);
these models describe exactly those dicts.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class AggregateItem(BaseModel):
    windowStart: str | None = Field(description="ISO 8601 UTC; null for window `all`")
    windowEnd: str | None = Field(description="ISO 8601 UTC, exclusive; null for window `all`")
    metric: str
    count: int
    sum: float
    min: float
    max: float
    avg: float
    firstTs: str | None = Field(default=None, description="window `all` only: first reading")
    lastTs: str | None = Field(default=None, description="window `all` only: last reading")
    late: int | None = Field(
        default=None, description="window `all` only: readings that missed their windows"
    )


class QueryResponse(BaseModel):
    deviceId: str
    window: str
    items: list[AggregateItem] = Field(description="sorted by windowStart, then metric")
    next: str | None = Field(
        default=None,
        description="cursor of the next page (pass it as `cursor`); null on the last page",
    )


class ErrorBody(BaseModel):
    detail: object
    reason: str | None = None
