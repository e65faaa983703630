"""Reads of the aggregate tables (storage/schema/001_aggregates.cql) and of the device registry.

1-minute rows live in one partition per (device, month), 1-hour rows per (device, year): a range
is read bucket by bucket in time order, stopping as soon as the page is full. Paging is keyset:
the cursor is the (window_start, metric) of the last row returned, and the next page starts
strictly after it, so pages never overlap or skip whatever the limit.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import orjson
from cassandra.query import PreparedStatement

from gateway import registry
from query_api.db import CassandraStore, Row
from query_api.errors import DependencyDown
from query_api.params import ROLLED, Cursor, PageQuery, TimeRange, Window, bucketing
from query_api.rollup import LocalDays, SourceRow, after_cursor, bucket_span, combine

Item = dict[str, Any]
# Source rows of a rolled-up window are read this many per round trip.
_SOURCE_CHUNK = 5_000

# Timestamps as epoch ms (bigint): cheaper for the driver than datetimes, and formatted strings
# are cached per value (every metric of a window shares its start and end).
_AGG_COLUMNS = "toUnixTimestamp(window_start), toUnixTimestamp(window_end), metric, count, sum, min, max, avg"
_TABLES = {
    Window.ONE_MINUTE: ("agg_1m", "bucket_month"),
    Window.ONE_HOUR: ("agg_1h", "bucket_year"),
}


@dataclass(frozen=True, slots=True)
class Page:
    # The items, or their JSON once the page is kept to be served many times (result_cache.py):
    # a kept page holds one string, not a dict per item to build, keep and free.
    items: list[Item] | orjson.Fragment
    next_cursor: str | None

    def json(self, **head: str) -> bytes:
        """The answer of docs/contract.md: `head` (whose aggregates, which window), the items
        and the cursor of the next page."""
        return orjson.dumps({**head, "items": self.items, "next": self.next_cursor})


class AggregateReader(Protocol):
    """What the routes need; AggregateRepository is the real one, unit tests bring a fake."""

    async def tenant_of(self, device_id: str) -> str | None: ...

    async def read(self, query: PageQuery) -> Page: ...


def month_buckets(start_ms: int, end_ms: int) -> Iterator[str]:
    """'YYYY-MM' of every month holding a window start in [start_ms, end_ms)."""
    first, last = _utc(start_ms), _utc(max(start_ms, end_ms - 1))
    year, month = first.year, first.month
    while (year, month) <= (last.year, last.month):
        yield f"{year:04d}-{month:02d}"
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)


def year_buckets(start_ms: int, end_ms: int) -> Iterator[int]:
    yield from range(_utc(start_ms).year, _utc(max(start_ms, end_ms - 1)).year + 1)


_EPOCH = datetime(1970, 1, 1)
_ISO: dict[int, str] = {}


def iso(millis: int | None) -> str | None:
    """ISO 8601 UTC with Z; milliseconds only when there are any (windows are whole minutes)."""
    if millis is None:
        return None
    text = _ISO.get(millis)
    if text is None:
        moment = _EPOCH + timedelta(milliseconds=millis)
        text = moment.isoformat(timespec="milliseconds" if millis % 1000 else "seconds") + "Z"
        if len(_ISO) >= 100_000:
            _ISO.clear()
        _ISO[millis] = text
    return text


def _utc(millis: int) -> datetime:
    return datetime.fromtimestamp(millis / 1000, UTC)


class _WindowStatements:
    """The four reads of a windowed table: (from start | after a cursor) x (any | one metric)."""

    def __init__(self, table: str, bucket: str) -> None:
        base = f"SELECT {_AGG_COLUMNS} FROM {table} WHERE device_id = ? AND {bucket} = ?"
        self.cql = {
            "range": f"{base} AND window_start >= ? AND window_start < ? LIMIT ?",
            # A multi-column slice resumes inside a window_start that has more metrics.
            "after": f"{base} AND (window_start, metric) > (?, ?) AND (window_start) < (?) LIMIT ?",
            "range_metric": f"{base} AND window_start >= ? AND window_start < ? AND metric = ?"
            " LIMIT ? ALLOW FILTERING",
            "after_metric": f"{base} AND window_start > ? AND window_start < ? AND metric = ?"
            " LIMIT ? ALLOW FILTERING",
        }
        self.prepared: dict[str, PreparedStatement] = {}


class AggregateRepository:
    def __init__(self, store: CassandraStore, hit_ttl_s: float, miss_ttl_s: float) -> None:
        self._store = store
        # A device's tenant is re-read after hit_ttl_s: the API never holds an answer for long.
        self._tenants = registry.TenantMemo(miss_ttl_s=miss_ttl_s, hit_ttl_s=hit_ttl_s, max_entries=100_000)
        self._windows = {w: _WindowStatements(*table) for w, table in _TABLES.items()}
        self._all_cql = {
            "all": "SELECT metric, count, sum, min, max, avg, toUnixTimestamp(first_ts),"
            " toUnixTimestamp(last_ts), late"
            " FROM agg_all WHERE device_id = ?",
        }
        self._all_cql["metric"] = self._all_cql["all"] + " AND metric = ?"
        self._all_cql["after"] = self._all_cql["all"] + " AND metric > ? LIMIT ?"
        self._all_cql["all"] += " LIMIT ?"
        self._all: dict[str, PreparedStatement] = {}
        self._tenant_stmt: PreparedStatement | None = None
        self.ready = False
        self.not_ready_reason: str | None = "statements not prepared yet"

    async def prepare(self) -> None:
        """Prepare every statement once, after the session is connected.

        Fails (DependencyDown) while a table is missing: the schema is `iot migrate`'s and the
        registry's to create, not ours."""
        try:
            await self._prepare_all()
        except DependencyDown as exc:
            self.not_ready_reason = exc.detail
            raise
        self.not_ready_reason = None
        self.ready = True

    async def _prepare_all(self) -> None:
        for statements in self._windows.values():
            for name, cql in statements.cql.items():
                statements.prepared[name] = await self._store.prepare(cql)
        for name, cql in self._all_cql.items():
            self._all[name] = await self._store.prepare(cql)
        self._tenant_stmt = await self._store.prepare(
            f"SELECT tenant FROM {registry.TABLE} WHERE device_id = ?"
        )

    def _require_ready(self) -> None:
        if not self.ready:
            raise DependencyDown(f"Cassandra not ready: {self.not_ready_reason}")

    async def tenant_of(self, device_id: str) -> str | None:
        """The device's tenant from the registry, or None for an unknown device (cached)."""
        known, tenant = self._tenants.known(device_id)
        if known:
            return tenant
        self._require_ready()
        assert self._tenant_stmt is not None
        rows = await self._store.execute(self._tenant_stmt, (device_id,))
        tenant = rows[0][0] if rows else None
        self._tenants.remember(device_id, tenant)
        return tenant

    async def read(self, query: PageQuery) -> Page:
        self._require_ready()
        if query.span is None:
            return await self._totals(query.key, query.metric, query.limit, query.cursor)
        return await self._window_page(query, query.span)

    async def _window_page(self, query: PageQuery, span: TimeRange) -> Page:
        """Windows starting in the span; 5m, 15m and 1d rolled up from the stored rows, 1d on
        the local midnights of the query's zone (which changes nothing else)."""
        if query.window in ROLLED:
            return await self._rolled(query, span)
        device_id, window, metric = query.key, query.window, query.metric
        limit, cursor = query.limit, query.cursor
        statements = self._windows[window]
        start_ms = span.start_ms
        if cursor is not None:
            start_ms = max(start_ms, cursor.window_start_ms)
        buckets: Iterator[str] | Iterator[int] = (
            month_buckets(start_ms, span.end_ms)
            if window is Window.ONE_MINUTE
            else year_buckets(start_ms, span.end_ms)
        )
        rows: list[Row] = []
        # Only the first bucket resumes inside a window_start; later ones start at their beginning.
        after = cursor if cursor is not None and cursor.window_start_ms >= span.start_ms else None
        if start_ms < span.end_ms:
            for bucket in buckets:
                stmt, params = self._bucket_read(
                    statements,
                    device_id,
                    bucket,
                    start_ms,
                    span.end_ms,
                    metric,
                    after,
                    want=limit + 1 - len(rows),
                )
                rows.extend(await self._store.execute(stmt, params))
                after = None
                if len(rows) > limit:
                    break
        page, more = rows[:limit], len(rows) > limit
        items: list[Item] = []
        append = items.append
        # The busiest loop of a read: every metric of a window shares its formatted bounds.
        last = None
        first = second = None
        for start, end, name, count, total, low, high, mean in page:
            if start != last:
                last, first, second = start, iso(start), iso(end)
            append(
                {
                    "windowStart": first,
                    "windowEnd": second,
                    "metric": name,
                    "count": count,
                    "sum": total,
                    "min": low,
                    "max": high,
                    "avg": mean,
                }
            )
        next_cursor = Cursor(page[-1][0], page[-1][2]).encode() if more else None
        return Page(items, next_cursor)

    async def _rolled(self, query: PageQuery, span: TimeRange) -> Page:
        """A page of rolled-up windows: the source rows of whole buckets, in time order, read
        until limit + 1 windows after the cursor are complete (bounded by the page, not the span)."""
        device_id, metric, limit, cursor = query.key, query.metric, query.limit, query.cursor
        buckets = bucketing(query.window, query.zone)
        read_from = span.start_ms if cursor is None else max(span.start_ms, cursor.window_start_ms)
        bounds = bucket_span(buckets, read_from, span.end_ms)
        if bounds is None:
            return Page([], None)
        # A local day is a union of stored hours only where its midnights are whole UTC hours.
        source = Window.ONE_MINUTE
        if isinstance(buckets, LocalDays) and buckets.whole_hours(*bounds):
            source = Window.ONE_HOUR
        after = (cursor.window_start_ms, cursor.metric) if cursor is not None else None
        rows: list[SourceRow] = []
        complete: set[tuple[int, str]] = set()
        last_start, current = -1, -1
        chunks = self._source_chunks(device_id, source, bounds[0], bounds[1], metric)
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                for start, _end, name, count, total, low, high, _avg in chunk:
                    if start != last_start:
                        last_start = start
                        bucket = buckets.start_of(start)
                        if bucket != current:
                            # Every earlier bucket is whole now: a full page needs no more rows.
                            if len(complete) > limit:
                                break
                            current = bucket
                    if after is None or (current, name) > after:
                        complete.add((current, name))
                    rows.append((start, name, count, total, low, high))
                else:
                    continue
                break
        items = combine(rows, buckets)
        if after is not None:
            items = after_cursor(items, *after)
        page, more = items[:limit], len(items) > limit
        next_cursor = Cursor(page[-1]["windowStart"], page[-1]["metric"]).encode() if more else None
        for item in page:
            item["windowStart"] = iso(item["windowStart"])
            item["windowEnd"] = iso(item["windowEnd"])
        return Page(page, next_cursor)

    async def _source_chunks(
        self, device_id: str, source: Window, start_ms: int, end_ms: int, metric: str | None
    ) -> AsyncGenerator[list[Row], None]:
        """Stored rows with window_start in [start_ms, end_ms), in (window_start, metric) order."""
        statements = self._windows[source]
        buckets: Iterator[str] | Iterator[int] = (
            month_buckets(start_ms, end_ms) if source is Window.ONE_MINUTE else year_buckets(start_ms, end_ms)
        )
        for bucket in buckets:
            after: Cursor | None = None
            while True:
                stmt, params = self._bucket_read(
                    statements, device_id, bucket, start_ms, end_ms, metric, after, _SOURCE_CHUNK
                )
                rows = await self._store.execute(stmt, params)
                if rows:
                    yield rows
                if len(rows) < _SOURCE_CHUNK:
                    break
                after = Cursor(rows[-1][0], rows[-1][2])

    @staticmethod
    def _bucket_read(
        statements: _WindowStatements,
        device_id: str,
        bucket: str | int,
        start_ms: int,
        end_ms: int,
        metric: str | None,
        after: Cursor | None,
        want: int,
    ) -> tuple[PreparedStatement, tuple[object, ...]]:
        key = (device_id, bucket)
        if after is None and metric is None:
            return statements.prepared["range"], (*key, start_ms, end_ms, want)
        if after is None:
            return statements.prepared["range_metric"], (*key, start_ms, end_ms, metric, want)
        if metric is None:
            return statements.prepared["after"], (
                *key,
                after.window_start_ms,
                after.metric,
                end_ms,
                want,
            )
        return statements.prepared["after_metric"], (
            *key,
            after.window_start_ms,
            end_ms,
            metric,
            want,
        )

    async def _totals(self, device_id: str, metric: str | None, limit: int, cursor: Cursor | None) -> Page:
        if metric is not None:
            if cursor is not None and cursor.metric >= metric:
                rows: list[Row] = []
            else:
                rows = await self._store.execute(self._all["metric"], (device_id, metric))
        elif cursor is not None:
            rows = await self._store.execute(self._all["after"], (device_id, cursor.metric, limit + 1))
        else:
            rows = await self._store.execute(self._all["all"], (device_id, limit + 1))
        page, more = rows[:limit], len(rows) > limit
        items = [
            {
                "windowStart": None,
                "windowEnd": None,
                "metric": r[0],
                "count": r[1],
                "sum": r[2],
                "min": r[3],
                "max": r[4],
                "avg": r[5],
                "firstTs": iso(r[6]),
                "lastTs": iso(r[7]),
                "late": r[8] or 0,
            }
            for r in page
        ]
        next_cursor = Cursor(0, page[-1][0]).encode() if more else None
        return Page(items, next_cursor)
