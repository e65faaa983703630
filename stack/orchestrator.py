"""`iot up` / `iot down` / `iot status`: the stack as a whole."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby

from stack import process
from stack.config import StackSettings
from stack.errors import StackError
from stack.service import Service
from stack.services import all_services

log = logging.getLogger(__name__)


def _parallel(services: list[Service], action: str, *args: object) -> None:
    """Run one method on several services at once; raise the first failure, naming the service."""
    if not services:
        return
    with ThreadPoolExecutor(max_workers=len(services)) as pool:
        futures = {s.name: pool.submit(getattr(s, action), *args) for s in services}
        errors: list[str] = []
        for name, future in futures.items():
            exc = future.exception()
            if exc is not None:
                errors.append(str(exc) if isinstance(exc, StackError) else f"{name}: {exc!r}")
        if errors:
            raise StackError("\n\n".join(errors))


def up(settings: StackSettings, only: set[str] | None = None, skip: set[str] | None = None) -> float:
    """Install what is missing, start what is not running, wait for readiness, initialise."""
    started = time.monotonic()
    services = [
        s for s in all_services(settings)
        if (only is None or s.name in only) and (skip is None or s.name not in skip)
    ]
    for directory in (settings.stack_dir, settings.run_dir, settings.log_dir, settings.cache_dir):
        directory.mkdir(parents=True, exist_ok=True)
    _parallel(services, "install")
    for stage, group in groupby(sorted(services, key=lambda s: s.stage), key=lambda s: s.stage):
        members = list(group)
        log.info("stage %d: %s", stage, ", ".join(s.name for s in members))
        _parallel(members, "start")
        _parallel(members, "wait_ready", settings.ready_timeout_s)
        _parallel(members, "initialise")
    elapsed = time.monotonic() - started
    log.info("stack ready in %.1fs", elapsed)
    return elapsed


def down(settings: StackSettings, purge: bool = False) -> None:
    """Stop, in reverse order, only what we started (by pid); keep the data unless purge."""
    for service in reversed(all_services(settings)):
        try:
            service.stop()
        except Exception:
            log.exception("stopping %s failed", service.name)
    if purge and settings.stack_dir.exists():
        import shutil

        log.info("purging %s", settings.stack_dir)
        shutil.rmtree(settings.stack_dir)


def status(settings: StackSettings) -> list[tuple[str, str, str]]:
    """(service, state, details) for each service."""
    rows = []
    for service in all_services(settings):
        specs = service.processes()
        if not specs:  # runs inside another service (the Flink job)
            running = service.running()
            rows.append((service.name, "running" if running else "stopped", service.describe()))
            continue
        pids = [process.read_pid(spec) for spec in specs]
        if all(pid is None for pid in pids):
            rows.append((service.name, "stopped", ""))
            continue
        rss = sum(process.resident_memory_bytes(pid) for pid in pids if pid is not None)
        state = "running" if all(pids) else "degraded"
        try:
            detail = service.describe()
        except Exception as exc:
            detail = f"({exc.__class__.__name__}: {exc})"
        rows.append((service.name, state, f"rss {rss / 2**20:.0f} MiB {detail}".strip()))
    return rows
