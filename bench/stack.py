"""The stack itself: `iot up` to all-ready with a warm cache (median of 3) and with an empty one,
and the resident memory of the idle stack.

Targets: warm start at most 90 s; idle stack at most 4 GiB RSS. The empty-cache run
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
    subprocess.run(
        [sys.executable, "-m", "stack.cli", *args],
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    return time.monotonic() - started


def _idle_rss(settings: StackSettings) -> dict[str, int]:
    from stack.services import all_services

    rss = {}
    for service in all_services(settings):
        pids = [process.read_pid(spec) for spec in service.processes()]
        rss[service.name] = sum(process.resident_memory_bytes(pid) for pid in pids if pid)
    return rss


def _first_window_seconds(settings: StackSettings, started: float, deadline_s: float = 300) -> float:
    """Seconds from `started` (wall clock) until the API returns a 1-minute window that began
    after it, for the default emulator's first device."""
    import httpx

    from gateway import endpoints

    token_url = (
        f"http://localhost:{settings.keycloak_port}/realms/{endpoints.KEYCLOAK_REALM}"
        "/protocol/openid-connect/token"
    )
    token = httpx.post(
        token_url,
        data={
            "grant_type": "password",
            "client_id": endpoints.KEYCLOAK_CLIENT_ID,
            "username": "client1",
            "password": "temp",
        },
        timeout=10,
    ).json()["access_token"]
    url = f"http://localhost:{settings.query_api_port}/query/dev-00000/1m"
    while time.time() - started < deadline_s:
        response = httpx.get(
            url,
            params={"from": int(started * 1000)},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        if response.status_code == 200 and response.json()["items"]:
            return time.time() - started
        time.sleep(1)
    raise TimeoutError(f"no 1-minute window within {deadline_s}s of `iot up`")


def run(repeats: int = 3, cold: bool = True) -> dict[str, Any]:
    settings = StackSettings()
    env = dict(os.environ)
    was_up = all(state == "running" for _, state, _ in orchestrator.status(settings))
    _iot(["down"], env)
    warm = []
    for _ in range(repeats):
        up_started = time.time()
        warm.append(_iot(["up"], env))
        if len(warm) < repeats:
            _iot(["down"], env)
    first_window = _first_window_seconds(settings, up_started)
    time.sleep(30)  # idle: let start-up garbage settle before reading memory
    rss = _idle_rss(settings)
    figures: dict[str, Any] = {
        "warm_up_seconds": [round(t, 1) for t in warm],
        "warm_up_median_seconds": round(statistics.median(warm), 1),
        "warm_target_seconds": 90,
        "up_to_first_1m_window_via_api_seconds": round(first_window, 1),
        "first_window_target_seconds": 180,
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
