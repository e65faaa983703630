"""The stack itself: `iot up` to all-ready with a warm cache (median of 3) and with an empty one,
and the resident memory of the idle stack.

Targets (issue 2): warm start at most 90 s; idle stack at most 4 GiB RSS. The empty-cache run
uses a temporary artifact cache and Maven repository, so the real caches are left alone.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stack import orchestrator, process
from stack.config import StackSettings


def _iot(args: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "stack.cli", *args], env=env, check=True,
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def _idle_rss(settings: StackSettings) -> dict[str, int]:
    from stack.services import all_services

    rss = {}
    for service in all_services(settings):
        pids = [process.read_pid(spec) for spec in service.processes()]
        rss[service.name] = sum(process.resident_memory_bytes(pid) for pid in pids if pid)
    return rss


def run(repeats: int = 3, cold: bool = True) -> dict[str, Any]:
    settings = StackSettings()
    env = dict(os.environ)
    was_up = all(state == "running" for _, state, _ in orchestrator.status(settings))
    _iot(["down"], env)
    warm = []
    for _ in range(repeats):
        warm.append(_iot(["up"], env))
        if len(warm) < repeats:
            _iot(["down"], env)
    time.sleep(30)  # idle: let start-up garbage settle before reading memory
    rss = _idle_rss(settings)
    figures: dict[str, Any] = {
        "warm_up_seconds": [round(t, 1) for t in warm],
        "warm_up_median_seconds": round(statistics.median(warm), 1),
        "warm_target_seconds": 90,
        "idle_rss_mib_by_service": {k: round(v / 2**20) for k, v in rss.items()},
        "idle_rss_total_mib": round(sum(rss.values()) / 2**20),
        "idle_rss_target_mib": 4096,
    }
    _iot(["down"], env)
    if cold:
        with tempfile.TemporaryDirectory(prefix="iot-cold-") as tmp:
            cold_env = {
                **env,
                "IOT_CACHE_DIR": str(Path(tmp) / "cache"),
                "IOT_STACK_DIR": str(Path(tmp) / "stack"),
                "MAVEN_OPTS": f"-Dmaven.repo.local={Path(tmp) / 'm2'}",
            }
            try:
                figures["empty_cache_up_seconds"] = round(_iot(["up", "--skip", "emulator"], cold_env), 1)
            finally:
                _iot(["down"], cold_env)
    if was_up:
        _iot(["up"], env)
    return figures
