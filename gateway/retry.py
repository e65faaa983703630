"""Retries, one way for every stage: exponential backoff from `initial_s`, capped at `max_s`, each
delay drawn within +-`jitter` of its step (so a fleet of clients does not retry in step), and an
optional limit of attempts.

    backoff = Backoff(initial_s=0.5, max_s=30.0)
    value = await retry_async(fetch, (OSError,), backoff, stop=stop, on_retry=log_it)
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# 2**64 steps saturate any cap; bounding the exponent keeps the float from overflowing.
_MAX_EXPONENT = 64


class RetriesExhausted(RuntimeError):
    """`max_attempts` retries were made; the last failure is the cause."""


class Stopped(Exception):
    """The stop event was set while waiting to retry."""


@dataclass
class Backoff:
    """Exponential backoff with jitter: `initial_s` times `multiplier` per attempt, at most
    `max_s`, each wait spread by +-`jitter` so that clients cut off together do not come back
    together."""

    initial_s: float = 0.5
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.5
    # None: retry for as long as the caller runs.
    max_attempts: int | None = None
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s and self.multiplier >= 1 and 0 <= self.jitter < 1):
            raise ValueError(f"invalid backoff {self!r}")

    def next_delay(self) -> float:
        """The wait before the next attempt, counting it; RetriesExhausted past the limit."""
        if self.max_attempts is not None and self.attempts >= self.max_attempts:
            raise RetriesExhausted(f"gave up after {self.attempts} retries")
        delay = self.delay_after(self.attempts)
        self.attempts += 1
        return delay

    def delay_after(self, attempts: int) -> float:
        """The wait after `attempts` earlier attempts, counting nothing: for a caller that keeps
        its own count (the supervisor counts restarts within a sliding window)."""
        step = min(self.max_s, self.initial_s * self.multiplier ** min(attempts, _MAX_EXPONENT))
        return step * self.rng.uniform(1 - self.jitter, 1 + self.jitter)

    def reset(self) -> None:
        """After a success: the next failure starts from `initial_s` again."""
        self.attempts = 0

    def saturate(self) -> None:
        """The next delay is the longest (a failure that retrying soon cannot cure)."""
        self.attempts = max(self.attempts, _MAX_EXPONENT)


async def wait_or_stop(stop: asyncio.Event | None, delay_s: float) -> bool:
    """Sleep delay_s, waking early when stop is set; True if stopped."""
    if stop is None:
        await asyncio.sleep(delay_s)
        return False
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), delay_s)
    return stop.is_set()


async def retry_async(
    call: Callable[[], Awaitable[T]],
    retry_on: tuple[type[BaseException], ...],
    backoff: Backoff,
    *,
    stop: asyncio.Event | None = None,
    on_retry: Callable[[BaseException, float], None] | None = None,
) -> T:
    """call() until it returns; a `retry_on` failure waits the backoff's next delay (on_retry is
    told the failure and the delay first). Stopped when stop is set, RetriesExhausted past the
    limit; any other exception propagates at once."""
    while True:
        if stop is not None and stop.is_set():
            raise Stopped()
        try:
            return await call()
        except retry_on as exc:
            try:
                delay = backoff.next_delay()
            except RetriesExhausted as exhausted:
                raise exhausted from exc
            if on_retry is not None:
                on_retry(exc, delay)
        if await wait_or_stop(stop, delay):
            raise Stopped()
