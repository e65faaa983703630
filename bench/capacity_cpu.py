"""Where a capacity step's CPU goes: each stage's cores while idle and under the step's load,
its CPU per reading beyond idle, and the cores the same stages would need at a target rate.

The path shares one machine with the publishers, so its capacity is bounded by
    cores >= idle cores + rate * (CPU per reading of every stage, publishers included);
the step's own figures, measured in the same run, say whether a target rate can fit at all."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.cpu import machine_cpu_s, stack_cpu_s

# The stack's processes by stage (pid file names); the rest of the stack counts as `other`.
STAGES = {
    "mosquitto": "mosquitto",
    "bridge": "bridge",
    "kafka": "kafka",
    "flink-taskmanager": "flink",
    "flink-jobmanager": "flink",
    "writer": "writer",
    "cassandra": "cassandra",
}


def _stage(name: str) -> str:
    # The replicated profile's nodes are numbered: kafka-1, cassandra-2, bridge-1, ...
    base = name.rstrip("0123456789").rstrip("-")
    return STAGES.get(name) or STAGES.get(base) or "other"


@dataclass(frozen=True)
class CpuSnapshot:
    at: float
    stages: dict[str, float]
    machine: tuple[float, float]

    @classmethod
    def take(cls, run_dir: Path) -> CpuSnapshot:
        stages: dict[str, float] = {}
        for name, seconds in stack_cpu_s(run_dir).items():
            stages[_stage(name)] = stages.get(_stage(name), 0.0) + seconds
        return cls(time.monotonic(), stages, machine_cpu_s())


@dataclass
class CpuBudget:
    """Snapshots around a step's idle gap (devices connected, not yet publishing) and the step."""

    run_dir: Path
    marks: dict[str, CpuSnapshot] = field(default_factory=dict)

    def mark(self, name: str) -> None:
        self.marks[name] = CpuSnapshot.take(self.run_dir)

    def figures(self, readings: int, publishers_cpu_s: float, target_rate: int) -> dict[str, Any]:
        idle_from, idle_to = self.marks["idle"], self.marks["go"]
        step_from, step_to = self.marks["go"], self.marks["end"]
        idle_s = max(1e-3, idle_to.at - idle_from.at)
        step_s = max(1e-3, step_to.at - step_from.at)
        stages: dict[str, dict[str, float]] = {}
        for name in sorted(step_to.stages):
            idle_cores = (idle_to.stages.get(name, 0.0) - idle_from.stages.get(name, 0.0)) / idle_s
            used = step_to.stages[name] - step_from.stages.get(name, 0.0)
            stages[name] = {
                "idle_cores": round(idle_cores, 3),
                "step_cores": round(used / step_s, 3),
                "us_per_reading": round(max(0.0, used - idle_cores * step_s) / max(1, readings) * 1e6, 1),
            }
        publishers_us = publishers_cpu_s / max(1, readings) * 1e6
        per_reading_us = sum(s["us_per_reading"] for s in stages.values()) + publishers_us
        idle_cores = sum(s["idle_cores"] for s in stages.values())
        busy = step_to.machine[0] - step_from.machine[0]
        total = step_to.machine[1] - step_from.machine[1]
        return {
            "stages": stages,
            "publishers_us_per_reading": round(publishers_us, 1),
            "us_per_reading": round(per_reading_us, 1),
            "idle_cores": round(idle_cores, 3),
            "machine_busy_share": round(busy / total, 3) if total else None,
            "target_rate": target_rate,
            "cores_at_target": round(idle_cores + per_reading_us * target_rate / 1e6, 2),
        }
