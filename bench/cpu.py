"""CPU time as the benches charge it: user + system seconds of every thread of a process, of
each stack process by its pid file, and of the whole machine. Standard library only."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def stack_cpu_s(run_dir: Path) -> dict[str, float]:
    """CPU seconds used so far by each process the stack runner started (its pid files)."""
    used: dict[str, float] = {}
    for pid_file in sorted(run_dir.glob("*.pid")):
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, IndexError, ValueError):
            continue
        used[pid_file.stem] = process_cpu_s(pid)
    return used


def machine_cpu_s() -> tuple[float, float]:
    """(busy, elapsed) CPU seconds of all cores since boot, from /proc/stat: busy is everything
    but idle and iowait, so a difference of two readings is the share of the machine in use."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already inside user and nice
    idle = fields[3] + fields[4]
    return (total - idle) / TICK, total / TICK
