"""The capacity step's CPU budget: per-stage cost per reading beyond idle, and the cores a target
rate would need, from snapshots (synthetic here; the bench takes them from /proc)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.capacity_cpu import CpuBudget, CpuSnapshot, _stage
from bench.cpu import machine_cpu_s, process_cpu_s, stack_cpu_s


def test_stage_names_cover_both_profiles() -> None:
    assert _stage("flink-taskmanager") == "flink"
    assert _stage("kafka-2") == "kafka"
    assert _stage("cassandra-3") == "cassandra"
    assert _stage("bridge-1") == "bridge"
    assert _stage("keycloak") == "other"


def test_cost_per_reading_is_what_the_step_used_beyond_idle() -> None:
    budget = CpuBudget(Path("/nonexistent"))
    budget.marks = {
        # 10 s idle: the bridge at 0.1 core, Kafka at 0.2.
        "idle": CpuSnapshot(0.0, {"bridge": 0.0, "kafka": 0.0}, (0.0, 0.0)),
        "go": CpuSnapshot(10.0, {"bridge": 1.0, "kafka": 2.0}, (5.0, 20.0)),
        # 20 s step of 100,000 readings: the bridge used 5 s (2 beyond idle), Kafka 4 s (0 beyond).
        "end": CpuSnapshot(30.0, {"bridge": 6.0, "kafka": 6.0}, (35.0, 60.0)),
    }
    figures = budget.figures(readings=100_000, publishers_cpu_s=3.0, target_rate=20_000)
    assert figures["stages"]["bridge"] == {"idle_cores": 0.1, "step_cores": 0.25, "us_per_reading": 30.0}
    assert figures["stages"]["kafka"]["us_per_reading"] == 0.0
    assert figures["publishers_us_per_reading"] == 30.0
    assert figures["us_per_reading"] == 60.0
    assert figures["machine_busy_share"] == 0.75
    # 0.3 idle cores + 60 us x 20,000/s.
    assert figures["cores_at_target"] == pytest.approx(1.5)


def test_cpu_readings_of_this_process_and_machine(tmp_path: Path) -> None:
    (tmp_path / "me.pid").write_text(f"{os.getpid()}\nmarker")
    (tmp_path / "gone.pid").write_text("999999999\nmarker")
    (tmp_path / "bad.pid").write_text("")
    used = stack_cpu_s(tmp_path)
    assert used["me"] > 0 and used["gone"] == 0.0 and "bad" not in used
    assert process_cpu_s(os.getpid()) >= used["me"]
    busy, total = machine_cpu_s()
    assert 0 < busy <= total
