"""The capacity bench's decisions: the rate search, the oracle and a step's verdict."""

from __future__ import annotations

import math

import pytest

from bench.capacity_search import (
    LAG_BOUND_S,
    Step,
    StepFigures,
    chosen_rate,
    compare_counts,
    next_rate,
    percentile,
    verdict,
)


def _search(capacity: int, start: int = 20_000, ceiling: int = 60_000, limit: int = 12) -> list[Step]:
    """The steps the search takes against a pipeline that keeps up with `capacity` exactly."""
    steps: list[Step] = []
    while len(steps) < limit and (rate := next_rate(steps, start, ceiling)) is not None:
        steps.append(Step(rate, rate <= capacity))
    return steps


def test_the_first_step_is_the_start_rate() -> None:
    assert next_rate([], 20_000, 60_000) == 20_000


@pytest.mark.parametrize("capacity", [3_000, 9_000, 17_500, 20_000, 26_000, 41_000])
def test_the_search_ends_within_its_resolution_below_the_capacity(capacity: int) -> None:
    steps = _search(capacity)
    best = chosen_rate(steps)
    assert best is not None and best <= capacity
    failures = [s.rate for s in steps if not s.passed]
    assert failures and min(failures) - best <= 0.1 * best + 500  # rounded to 500/s
    assert len(steps) <= 7


def test_rates_go_up_by_half_while_kept_up_and_stop_at_the_ceiling() -> None:
    steps = _search(10**9)
    assert [s.rate for s in steps] == [20_000, 30_000, 45_000, 60_000]
    assert chosen_rate(steps) == 60_000


def test_rates_halve_while_nothing_is_kept_up_and_stop_at_the_floor() -> None:
    steps = _search(0)
    assert [s.rate for s in steps] == [20_000, 10_000, 5_000, 2_500, 1_000]
    assert chosen_rate(steps) is None


def test_a_failure_below_a_pass_is_not_capacity() -> None:
    steps = [Step(20_000, True), Step(30_000, False), Step(25_000, True), Step(27_500, False),
             Step(22_000, False)]
    assert chosen_rate(steps) == 20_000
    noisy = [Step(20_000, False), Step(10_000, True), Step(15_000, True), Step(12_000, False)]
    assert chosen_rate(noisy) == 10_000


def test_the_oracle_counts_lost_and_twice_per_device_not_in_total() -> None:
    expected = {"a": 10, "b": 10, "c": 5}
    # a total that matches hides one device short and another over
    result = compare_counts(expected, {"a": 7, "b": 13, "c": 5})
    assert (result.expected, result.counted) == (25, 25)
    assert (result.lost, result.counted_twice, result.exact) == (3, 3, False)
    assert (result.devices_short, result.devices_over) == (["a"], ["b"])


def test_the_oracle_takes_a_device_never_counted_as_lost_and_a_stranger_as_twice() -> None:
    result = compare_counts({"a": 4, "b": 2}, {"a": 4, "z": 1})
    assert (result.lost, result.counted_twice) == (2, 1)
    assert compare_counts({"a": 4}, {"a": 4}).exact


def _figures(**overrides: object) -> StepFigures:
    base: dict[str, object] = {
        "rate": 20_000, "planned": 900_000, "sent": 900_000, "acked": 900_000,
        "window_full_share": 0.0, "freshness_s": [11.0] * 25, "lag_samples": [100_000] * 10,
    }
    base.update(overrides)
    return StepFigures(**base)  # type: ignore[arg-type]


def test_a_step_that_keeps_up() -> None:
    assert verdict(_figures()) == (True, "", [])


def test_a_slow_publisher_is_told_apart_from_a_path_that_pushes_back() -> None:
    kept, limit, reasons = verdict(_figures(sent=700_000, acked=700_000))
    assert (kept, limit) == (False, "publishers")
    kept, limit, reasons = verdict(_figures(sent=700_000, acked=700_000, window_full_share=0.4))
    assert (kept, limit) == (False, "pipeline")
    assert "PUBACKs" in reasons[0]


def test_freshness_lag_and_acknowledgements_each_fail_a_step() -> None:
    late = [11.0] * 24 + [math.inf]  # one sampled window never seen in the step
    assert verdict(_figures(freshness_s=late))[:2] == (False, "pipeline")
    assert verdict(_figures(freshness_s=[]))[0] is False
    assert verdict(_figures(lag_samples=[0, int(20_000 * LAG_BOUND_S) + 1]))[:2] == (False, "pipeline")
    assert verdict(_figures(acked=899_999))[:2] == (False, "pipeline")


def test_committed_offsets_judge_a_step_only_without_the_jobs_position() -> None:
    """Committed offsets trail the job's position by a checkpoint: by them the bound gets one
    interval more, and the position, when sampled, is what decides."""
    behind = int(20_000 * (LAG_BOUND_S + 2))  # within the bound plus a 5 s interval
    assert verdict(_figures(lag_samples=[], committed_lag_samples=[behind]))[0] is True
    assert verdict(_figures(lag_samples=[], committed_lag_samples=[behind],
                            checkpoint_interval_s=1))[:2] == (False, "pipeline")
    assert verdict(_figures(committed_lag_samples=[10 * behind]))[0] is True


def test_percentile_of_nothing_is_infinite() -> None:
    assert percentile([], 0.99) == math.inf
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
