"""gateway.retry: capped exponential backoff with jitter, a limit, and a stop."""

from __future__ import annotations

import asyncio
import random

import pytest

from gateway.retry import Backoff, RetriesExhausted, Stopped, retry_async, wait_or_stop


def test_delays_double_up_to_the_cap_within_the_jitter() -> None:
    backoff = Backoff(initial_s=0.5, max_s=4.0, jitter=0.5, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    steps = [0.5, 1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for delay, step in zip(delays, steps, strict=True):
        assert step * 0.5 <= delay <= step * 1.5
    assert len(set(delays)) == len(delays), "jitter spreads retries"
    backoff.reset()
    assert backoff.next_delay() <= 0.75
    backoff.saturate()
    assert backoff.next_delay() >= 2.0
    for _ in range(10_000):  # no overflow however long it retries
        assert backoff.next_delay() <= 6.0


def test_a_delay_for_a_count_kept_elsewhere_counts_nothing() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0.25, max_attempts=1)
    assert 6.0 <= backoff.delay_after(3) <= 10.0
    assert 0.75 <= backoff.delay_after(0) <= 1.25
    assert backoff.attempts == 0
    backoff.next_delay()  # the limit counts next_delay's attempts only


def test_the_limit_of_attempts_and_bad_settings() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0, max_attempts=2)
    backoff.next_delay()
    backoff.next_delay()
    with pytest.raises(RetriesExhausted):
        backoff.next_delay()
    with pytest.raises(ValueError):
        Backoff(initial_s=0, max_s=1.0)
    with pytest.raises(ValueError):
        Backoff(initial_s=2.0, max_s=1.0)


async def test_retry_async_retries_only_what_it_is_told_then_returns() -> None:
    calls: list[int] = []
    told: list[float] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise OSError("not yet")
        return "done"

    backoff = Backoff(initial_s=0.001, max_s=0.002)
    assert await retry_async(flaky, (OSError,), backoff, on_retry=lambda e, d: told.append(d)) == "done"
    assert len(calls) == 3 and len(told) == 2

    async def broken() -> str:
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        await retry_async(broken, (OSError,), Backoff(initial_s=0.001, max_s=0.002))

    async def down() -> str:
        raise OSError("down")

    with pytest.raises(RetriesExhausted):
        await retry_async(down, (OSError,), Backoff(initial_s=0.001, max_s=0.002, max_attempts=3))


async def test_a_stop_ends_the_wait_at_once() -> None:
    stop = asyncio.Event()

    async def down() -> None:
        stop.set()
        raise OSError("down")

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Stopped):
        await retry_async(down, (OSError,), Backoff(initial_s=30.0, max_s=60.0), stop=stop)
    assert loop.time() - started < 1.0
    assert await wait_or_stop(stop, 30.0)
