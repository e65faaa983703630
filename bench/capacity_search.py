"""The capacity bench's decisions, free of I/O: the next rate to try, whether a step kept up,
and the oracle's comparison of readings acknowledged with readings counted in Cassandra."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

# A step has kept up when all of these hold (docs/benchmarks.md, issue of the capacity figure).
FRESHNESS_P99_S = 15.0
# The job's lag (Kafka's end offsets vs the position its sources have read to): more than this
# many seconds' worth of readings at any sample is a backlog building. Its committed offsets
# trail that position by up to a checkpoint interval plus the checkpoint's own duration (they
# move only when a checkpoint completes, and under load a checkpoint of a large deduplication
# horizon takes seconds): judged by them alone, a step gets the interval on top of the bound.
LAG_BOUND_S = 20.0
# The publishers kept their schedule: at least this share of the readings planned went out.
PACE_KEPT = 0.98
# Of the pacer's ticks, more than this share with some device's in-flight window full means
# the broker held its PUBACKs back (Mosquitto saturated), not a publisher short of CPU. (A
# bridge falling behind does not show here: Mosquitto queues for it and acknowledges devices;
# it shows as freshness, lag and, if its queue overflows, readings lost.)
BACKPRESSURE_TICKS = 0.05


@dataclass(frozen=True)
class Step:
    rate: int
    passed: bool


def _round(rate: float, to: int = 500) -> int:
    return max(to, round(rate / to) * to)


def next_rate(
    steps: Sequence[Step], start: int, ceiling: int, resolution: float = 0.1, floor: int = 1000
) -> int | None:
    """The rate of the next short step, or None when the knee is found to within `resolution`
    (of the best rate kept up with) or the search leaves [floor, ceiling].

    Up by half again while every step keeps up, down by half while none does, then halving the
    interval between the best rate kept up with and the lowest failure above it."""
    if not steps:
        return start
    passed = [s.rate for s in steps if s.passed]
    failed = [s.rate for s in steps if not s.passed]
    best = max(passed, default=None)
    if best is None:
        lower = _round(min(failed) / 2)
        return lower if lower >= floor and lower < min(failed) else None
    above = [f for f in failed if f > best]
    if not above:
        if best >= ceiling:
            return None
        return min(ceiling, _round(best * 1.5))
    worst = min(above)
    if worst - best <= resolution * best:
        return None
    middle = _round((best + worst) / 2)
    return middle if best < middle < worst else None


def chosen_rate(steps: Sequence[Step]) -> int | None:
    """The highest rate kept up with below every failure (a failure below a pass wins: noise
    is not capacity)."""
    failed = [s.rate for s in steps if not s.passed]
    kept = [s.rate for s in steps if s.passed and s.rate < min(failed, default=s.rate + 1)]
    return max(kept, default=None)


@dataclass
class OracleResult:
    devices: int
    expected: int
    counted: int
    lost: int
    counted_twice: int
    devices_short: list[str] = field(default_factory=list)
    devices_over: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.lost == 0 and self.counted_twice == 0


def compare_counts(expected: Mapping[str, int], counted: Mapping[str, int]) -> OracleResult:
    """Per device: readings acknowledged to it vs readings Cassandra's 1m windows count for it.
    A device counted but never expected is counted twice in full (it is not this run's)."""
    lost = twice = 0
    short, over = [], []
    for device in sorted(set(expected) | set(counted)):
        want, got = expected.get(device, 0), counted.get(device, 0)
        if got < want:
            lost += want - got
            short.append(device)
        elif got > want:
            twice += got - want
            over.append(device)
    return OracleResult(
        devices=len(expected), expected=sum(expected.values()), counted=sum(counted.values()),
        lost=lost, counted_twice=twice, devices_short=short[:10], devices_over=over[:10],
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("inf")


@dataclass(frozen=True)
class StepFigures:
    """What one step measured; `freshness_s` holds inf for a sampled window never seen."""

    rate: int
    planned: int
    sent: int
    acked: int
    window_full_share: float
    freshness_s: Sequence[float]
    # By the job's own position (its sources' current offsets); may be empty when Flink's
    # metrics did not answer, then the committed offsets' samples judge the step.
    lag_samples: Sequence[int]
    committed_lag_samples: Sequence[int] = ()
    checkpoint_interval_s: float = 5.0


def verdict(step: StepFigures) -> tuple[bool, str, list[str]]:
    """(kept up, who limited it: "" | "publishers" | "pipeline", the reasons it did not)."""
    reasons: list[str] = []
    limit = ""
    if step.sent < PACE_KEPT * step.planned:
        pushed_back = step.window_full_share > BACKPRESSURE_TICKS
        limit = "pipeline" if pushed_back else "publishers"
        reasons.append(
            f"{step.sent:,} of {step.planned:,} readings sent: "
            + ("the broker held PUBACKs back (windows full)" if pushed_back
               else "the publishers could not keep the pace (their own CPU)")
        )
    if step.acked < step.sent:
        limit = limit or "pipeline"
        reasons.append(f"{step.sent - step.acked:,} readings never acknowledged")
    if not step.freshness_s:
        reasons.append("no window of this step's devices was sampled")
    else:
        p99 = percentile(step.freshness_s, 0.99)
        if p99 > FRESHNESS_P99_S:
            limit = limit or "pipeline"
            reasons.append(f"freshness p99 {p99:.1f} s > {FRESHNESS_P99_S:.0f} s")
    if step.lag_samples:
        samples, seconds, what = step.lag_samples, LAG_BOUND_S, "the job's lag"
    else:
        samples, seconds = step.committed_lag_samples, LAG_BOUND_S + step.checkpoint_interval_s
        what = "the job's committed lag"
    bound = step.rate * seconds
    if samples and max(samples) > bound:
        limit = limit or "pipeline"
        reasons.append(f"{what} {max(samples):,} > {bound:,.0f} ({seconds:.0f} s of readings)")
    return not reasons, limit, reasons
