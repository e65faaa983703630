"""Expected aggregates computed in plain Python, independently of Flink: the tests' oracle."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Agg:
    count: int = 0
    sum: float = 0.0
    min: float = float("inf")
    max: float = float("-inf")
    first_ts: int | None = None
    last_ts: int | None = None
    late: int = 0
    _values: list[float] = field(default_factory=list, repr=False)

    def add(self, ts: int, value: float, late: bool = False) -> None:
        self.count += 1
        self._values.append(value)
        self.sum = float(sum(self._values))
        self.min = min(self.min, value)
        self.max = max(self.max, value)
        self.first_ts = ts if self.first_ts is None else min(self.first_ts, ts)
        self.last_ts = ts if self.last_ts is None else max(self.last_ts, ts)
        self.late += int(late)

    @property
    def avg(self) -> float:
        return self.sum / self.count


@dataclass(frozen=True)
class OracleReading:
    device_id: str
    ts: int
    metrics: dict[str, float]
    late: bool = False  # the test made it arrive after its 1-minute window was final
    seq: int | None = None


def expected(
    readings: Iterable[OracleReading],
) -> tuple[dict[tuple[str, str, int], Agg], dict[tuple[str, str, int], Agg], dict[tuple[str, str], Agg]]:
    """(1m by (device, metric, window start ms), 1h likewise, all-time by (device, metric))."""
    minute: dict[tuple[str, str, int], Agg] = defaultdict(Agg)
    hour: dict[tuple[str, str, int], Agg] = defaultdict(Agg)
    all_time: dict[tuple[str, str], Agg] = defaultdict(Agg)
    for reading in readings:
        for metric, value in reading.metrics.items():
            all_time[(reading.device_id, metric)].add(reading.ts, value, reading.late)
            if reading.late:
                continue
            minute[(reading.device_id, metric, reading.ts - reading.ts % 60_000)].add(reading.ts, value)
            hour[(reading.device_id, metric, reading.ts - reading.ts % 3_600_000)].add(reading.ts, value)
    return dict(minute), dict(hour), dict(all_time)


def close_enough(actual: float, wanted: float, rel: float = 1e-9) -> bool:
    return abs(actual - wanted) <= rel * max(1.0, abs(wanted))
