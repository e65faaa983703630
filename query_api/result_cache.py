"""A short-lived cache of answers in front of the repository ("micro-caching").

A device's 1-minute rows change once a minute at most (a window row is written once, when the
watermark closes it), yet dashboards poll the same range many times a second. Keeping each answer
for `ttl_s` (default 1 s) turns those polls into dictionary lookups while adding at most `ttl_s`
to the 10-15 s a row already takes to appear. Concurrent misses of one key share a single read,
so a burst of identical requests on a cold key costs Cassandra one query, not one per request.

An answer older than `ttl_s` (but younger than twice that) is still served once, while a fresh
read runs behind it: no caller of a busy key waits for the refresh, and no answer is older than
`2 * ttl_s` plus one read.

Keys are normalised to the window grid: windows start on whole minutes (hours, quarter hours,
local midnights of the key's zone), so `from`/`to`
with any milliseconds select the same rows as their values rounded up to the grid, and "the last
hour" requested at 10:00:00.123 and 10:00:59.456 is one key. Keys are the parsed parameters
the route passes on, so nothing else in a URL can make a new entry. Authorisation is not cached
here: the route checks the caller's tenant before it asks for rows.

Bounded twice: at most `max_entries` answers and `budget_bytes` in all, the least recently kept
going first; an answer above `max_bytes` is served to its waiters but not kept. A kept page is its
items' JSON only: on a fleet's distinct reads every miss evicts the oldest page, and freeing a
string costs nothing next to freeing 180 dicts gone cold in memory (keeping the dicts doubled the
CPU of a miss).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from dataclasses import replace

import orjson

from query_api.bounded import BoundedLru, CacheLimits
from query_api.observability import ApiMetrics
from query_api.params import PageQuery, align
from query_api.repository import AggregateReader, Page

Load = Callable[[], Coroutine[object, object, Page]]


class CachedReader:
    """An AggregateReader answering repeated reads from memory for `limits.ttl_s`; bounded LRU."""

    def __init__(
        self, inner: AggregateReader, limits: CacheLimits, metrics: ApiMetrics | None = None
    ) -> None:
        self._inner = inner
        self._ttl_s = limits.ttl_s
        self._max_bytes = limits.max_bytes
        # JSON size of each page read, not yet settled and small enough to keep (a Fragment does
        # not tell its length).
        self._sizes: dict[PageQuery, int] = {}
        # query -> (page, fetched at)
        self.kept: BoundedLru[PageQuery, tuple[Page, float]] = BoundedLru(limits)
        self._loading: dict[PageQuery, asyncio.Future[Page]] = {}
        self.hits = 0
        self.misses = 0
        if metrics is not None:
            metrics.watch_cache("reads", self.kept)

    def __getattr__(self, name: str) -> object:
        # Readiness and the like (`ready`, `not_ready_reason`) are the real repository's.
        return getattr(self._inner, name)

    async def tenant_of(self, device_id: str) -> str | None:
        return await self._inner.tenant_of(device_id)

    async def read(self, query: PageQuery) -> Page:
        # The zone is part of every key: it moves 1d windows, and (refused or not) it is a
        # parameter a caller chose, so two zones never share an answer.
        if query.span is not None:
            query = replace(query, span=align(query.span, query.window, query.zone))
        return await self._get(query, lambda: self._inner.read(query))

    async def _get(self, key: PageQuery, load: Load) -> Page:
        cached = self.kept.get(key)
        now = time.monotonic()
        if cached is not None:
            page, fetched = cached
            age = now - fetched
            if age < self._ttl_s:
                self.hits += 1
                return page
            if age < 2 * self._ttl_s:
                # Stale but recent: answer now and refresh behind it, so that an expiry never
                # makes every caller of a busy key wait a Cassandra round trip at once.
                self.hits += 1
                if key not in self._loading:
                    self._start(key, load)
                return page
        read = self._loading.get(key)
        if read is None:
            self.misses += 1
            read = self._start(key, load)
        else:
            self.hits += 1
        # shield: the first caller going away (a client disconnect cancels its handler) must
        # not cancel the read the others wait for.
        return await asyncio.shield(read)

    def _start(self, key: PageQuery, load: Load) -> asyncio.Future[Page]:
        read = asyncio.ensure_future(self._encoded(key, load()))
        self._loading[key] = read
        read.add_done_callback(lambda done: self._settle(key, done))
        return read

    async def _encoded(self, key: PageQuery, read: Coroutine[object, object, Page]) -> Page:
        """The page with its items encoded once, rather than on every answer it serves."""
        page = await read
        data = orjson.dumps(page.items)
        if len(data) <= self._max_bytes:
            self._sizes[key] = len(data)
        return Page(orjson.Fragment(data), page.next_cursor)

    def _settle(self, key: PageQuery, read: asyncio.Future[Page]) -> None:
        del self._loading[key]
        size = self._sizes.pop(key, None)
        # Errors are not kept: the waiters see this one, the next request reads again.
        if read.cancelled() or read.exception() is not None:
            return
        if size is None:
            return  # served to its waiters, not kept: large pages must not crowd out the polls
        self.kept.keep(key, (read.result(), time.monotonic()), size + _ENTRY_BYTES)


# What a kept page costs besides its JSON: the page, its key and the entry.
_ENTRY_BYTES = 500
