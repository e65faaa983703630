"""What the two answer caches (result_cache.py, hot_answers.py) share: their bounds and an LRU
that keeps to them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from query_api.config import QueryApiSettings

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """How long an answer is kept (0: not at all) and how much is kept: at most `max_entries`
    answers and `budget_bytes` in all; an answer above `max_bytes` is served but not kept."""

    ttl_s: float
    max_entries: int
    max_bytes: int = 256 * 1024
    budget_bytes: int = 32 * 1024 * 1024

    @classmethod
    def of(cls, settings: QueryApiSettings) -> CacheLimits:
        return cls(
            settings.result_cache_s,
            settings.result_cache_entries,
            settings.result_cache_max_bytes,
            settings.result_cache_budget_bytes,
        )


class BoundedLru(Generic[K, V]):
    """Values with what each costs in bytes; the least recently kept go first once there are
    more than `max_entries` of them or they cost more than `budget_bytes` in all."""

    def __init__(self, limits: CacheLimits) -> None:
        self._max_entries = limits.max_entries
        self._budget_bytes = limits.budget_bytes
        self._kept: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self.bytes = 0

    @property
    def entries(self) -> int:
        return len(self._kept)

    def get(self, key: K) -> V | None:
        kept = self._kept.get(key)
        return None if kept is None else kept[0]

    def keep(self, key: K, value: V, cost: int) -> None:
        self.drop(key)
        self._kept[key] = (value, cost)
        self.bytes += cost
        while len(self._kept) > self._max_entries or self.bytes > self._budget_bytes:
            _, (_, freed) = self._kept.popitem(last=False)
            self.bytes -= freed

    def drop(self, key: K) -> None:
        old = self._kept.pop(key, None)
        if old is not None:
            self.bytes -= old[1]
