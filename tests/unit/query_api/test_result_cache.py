"""CachedReader: repeated reads answered from memory, misses shared, errors not kept."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from query_api.bounded import CacheLimits
from query_api.params import MINUTE_MS, PageQuery, TimeRange, Window, align
from query_api.repository import Page
from query_api.result_cache import CachedReader


class CountingReader:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.delay_s = delay_s
        self.fail = False
        self.ready = True

    async def tenant_of(self, device_id: str) -> str | None:
        return "tenant-a"

    async def read(self, query: PageQuery) -> Page:
        self.calls.append((query.key, query.window, query.span, query.metric, query.limit, query.cursor))
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("down")
        return Page([{"n": len(self.calls)}], None)


def _items(page: Page) -> Any:
    return orjson.loads(page.json())["items"]


def test_align_rounds_both_ends_up_to_the_grid() -> None:
    assert align(TimeRange(1, 60_000), Window.ONE_MINUTE) == TimeRange(60_000, 60_000)
    assert align(TimeRange(0, 90_001), Window.ONE_MINUTE) == TimeRange(0, 120_000)
    assert align(TimeRange(3_600_001, 3_600_001), Window.ONE_HOUR) == TimeRange(7_200_000, 7_200_000)


@pytest.mark.parametrize("start", [0, 1, 59_999, 60_000])
@pytest.mark.parametrize("end", [60_000, 60_001, 119_999, 120_000, 180_000])
def test_align_selects_the_same_window_starts(start: int, end: int) -> None:
    grid = align(TimeRange(start, end), Window.ONE_MINUTE)
    starts = range(0, 300_000, MINUTE_MS)
    assert [s for s in starts if start <= s < end] == [s for s in starts if grid.start_ms <= s < grid.end_ms]


async def test_the_same_read_within_the_ttl_is_answered_from_memory() -> None:
    inner = CountingReader()
    cached = CachedReader(inner, CacheLimits(ttl_s=60, max_entries=10))
    first = await cached.read(PageQuery("d", Window.ONE_MINUTE, TimeRange(0, 60_001), None, 10, None))
    # Another millisecond, the same windows: the same key.
    again = await cached.read(PageQuery("d", Window.ONE_MINUTE, TimeRange(0, 60_002), None, 10, None))
    assert again is first and len(inner.calls) == 1
    assert inner.calls[0][2] == TimeRange(0, 120_000)
    await cached.read(PageQuery("d", Window.ONE_MINUTE, TimeRange(0, 60_002), "temperature", 10, None))
    await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    assert len(inner.calls) == 3 and (cached.hits, cached.misses) == (1, 3)


async def test_answers_expire() -> None:
    inner = CountingReader()
    cached = CachedReader(inner, CacheLimits(ttl_s=0.05, max_entries=10))
    await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    await asyncio.sleep(0.11)
    page = await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    assert _items(page) == [{"n": 2}]


async def test_a_stale_answer_is_served_while_a_refresh_runs_behind_it() -> None:
    inner = CountingReader()
    cached = CachedReader(inner, CacheLimits(ttl_s=0.2, max_entries=10))
    await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    await asyncio.sleep(0.25)
    stale = await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    assert _items(stale) == [{"n": 1}]
    await asyncio.sleep(0.01)
    fresh = await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    assert _items(fresh) == [{"n": 2}] and len(inner.calls) == 2


async def test_concurrent_misses_share_one_read_and_survive_a_cancelled_caller() -> None:
    inner = CountingReader(delay_s=0.05)
    cached = CachedReader(inner, CacheLimits(ttl_s=60, max_entries=10))
    span = TimeRange(0, 60_000)
    first = asyncio.ensure_future(cached.read(PageQuery("d", Window.ONE_MINUTE, span, None, 10, None)))
    await asyncio.sleep(0)
    others = [cached.read(PageQuery("d", Window.ONE_MINUTE, span, None, 10, None)) for _ in range(5)]
    first.cancel()
    pages = await asyncio.gather(*others)
    assert len(inner.calls) == 1 and all(page is pages[0] for page in pages)


async def test_errors_are_not_kept() -> None:
    inner = CountingReader()
    inner.fail = True
    cached = CachedReader(inner, CacheLimits(ttl_s=60, max_entries=10))
    span = TimeRange(0, 60_000)
    with pytest.raises(RuntimeError):
        await cached.read(PageQuery("d", Window.ONE_MINUTE, span, None, 10, None))
    inner.fail = False
    await cached.read(PageQuery("d", Window.ONE_MINUTE, span, None, 10, None))
    assert len(inner.calls) == 2


async def test_the_oldest_answer_goes_first_when_full() -> None:
    inner = CountingReader()
    cached = CachedReader(inner, CacheLimits(ttl_s=60, max_entries=2))
    for device in ("a", "b", "c", "a"):
        await cached.read(PageQuery(device, Window.ALL, None, None, 10, None))
    assert [call[0] for call in inner.calls] == ["a", "b", "c", "a"]
    assert cached.ready is True


async def test_a_page_larger_than_the_bound_is_served_but_not_kept() -> None:
    inner = CountingReader()
    cached = CachedReader(inner, CacheLimits(ttl_s=60, max_entries=10, max_bytes=5))
    first = await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    again = await cached.read(PageQuery("d", Window.ALL, None, None, 10, None))
    assert _items(first) == [{"n": 1}] and _items(again) == [{"n": 2}]


async def test_the_oldest_answers_go_first_when_over_the_byte_budget() -> None:
    inner = CountingReader()
    cached = CachedReader(inner, CacheLimits(ttl_s=60, max_entries=1_000, budget_bytes=3_000))
    for device in [f"d{n}" for n in range(20)]:
        await cached.read(PageQuery(device, Window.ALL, None, None, 10, None))
    assert 0 < cached.kept.bytes <= 3_000
    assert 0 < cached.kept.entries < 20
    kept = cached.kept.entries
    # The newest are the ones kept: read again without a new read.
    calls = len(inner.calls)
    await cached.read(PageQuery("d19", Window.ALL, None, None, 10, None))
    assert len(inner.calls) == calls
    # The same key read again replaces its entry, never counts it twice.
    cached_again = CachedReader(inner, CacheLimits(ttl_s=0.0001, max_entries=10))
    await cached_again.read(PageQuery("x", Window.ALL, None, None, 10, None))
    one = cached_again.kept.bytes
    await asyncio.sleep(0.001)
    await cached_again.read(PageQuery("x", Window.ALL, None, None, 10, None))
    assert cached_again.kept.bytes == one and cached_again.kept.entries == 1
    assert kept == cached.kept.entries
