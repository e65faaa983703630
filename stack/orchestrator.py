"""`iot up` / `iot down` / `iot status`: the stack as a whole."""

from __future__ import annotations

import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from itertools import groupby
from typing import TYPE_CHECKING

from stack import java, process, topology
from stack.config import ACTIVE_PROFILE_FILE, StackSettings
from stack.errors import StackError
from stack.service import Service
from stack.services import all_services

if TYPE_CHECKING:
    from stack.supervision import CrlRecord, SupervisorState

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
    _refuse_other_profile(settings)
    for directory in (settings.stack_dir, settings.run_dir, settings.log_dir, settings.cache_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # Before the parallel installs: apt and pip run once, and every service sees the runtimes
    # (a node of a replicated service needs what its service needs: kafka-2 -> kafka).
    java.ensure(settings, [re.sub(r"-\d+$", "", s.name) for s in services])
    topology.prepare(settings)
    topology.record_profile(settings)
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


def _refuse_other_profile(settings: StackSettings) -> None:
    """Both profiles use the contract's ports: one runs at a time, `iot down` in between."""
    marker = settings.base_stack_dir / ACTIVE_PROFILE_FILE
    recorded = marker.read_text().strip() if marker.exists() else "default"
    if recorded == settings.profile:
        return
    other = StackSettings.for_profile("replicated" if recorded == "replicated" else "default")
    if any(s.running() for s in all_services(other) if s.processes()):
        raise StackError(
            f"the {recorded} profile is running (state in {other.stack_dir}); stop it with "
            f"`iot down` before `iot up` starts the {settings.profile} profile"
        )


def down(settings: StackSettings, purge: bool = False) -> None:
    """Stop the supervisor first (it must not restart what is being stopped), then, in reverse
    order, only what we started (by pid); keep the data unless purge."""
    from stack import supervisor

    supervisor.stop(settings)
    for service in reversed(all_services(settings)):
        try:
            service.stop()
        except Exception:
            log.exception("stopping %s failed", service.name)
    # Nothing runs any more: `iot up` and `iot status` without options mean the default again.
    topology.forget_profile(settings)
    if purge and settings.stack_dir.exists():
        import shutil

        log.info("purging %s", settings.stack_dir)
        shutil.rmtree(settings.stack_dir)


def status(settings: StackSettings) -> list[tuple[str, str, str]]:
    """(service, state, details) for each service, then the supervisor's own row."""
    from stack.supervision import SupervisorState

    supervised = SupervisorState.load(settings.run_dir)
    now = time.time()
    rows = [_profile_row(settings)] if settings.replicated else []
    for service in all_services(settings):
        name, state, detail = _status_row(service)
        words = {supervised.processes[spec.name].state for spec in service.processes()
                 if spec.name in supervised.processes}
        if state != "running" and words & {"restarting", "gave up"}:
            state = "restarting" if "restarting" in words else "failed"
        parts = [detail, *_supervised(service, supervised, now)]
        rows.append((name, state, "; ".join(p for p in parts if p)))
    rows.append(_supervisor_row(settings, supervised, now))
    return rows


def _profile_row(settings: StackSettings) -> tuple[str, str, str]:
    """The replicated profile's topology in one line, above its nodes' rows."""
    s = settings
    return ("profile", "running", (
        f"replicated ({s.stack_dir}): {s.replicated_kafka_brokers} Kafka brokers (replication "
        f"{s.replicated_kafka_brokers}, min.insync.replicas {s.replicated_kafka_min_insync}, "
        f"SASL {topology.KAFKA_SASL_MECHANISM}), {s.replicated_cassandra_nodes} Cassandra nodes "
        f"(replication {s.replicated_cassandra_nodes}, {s.replicated_cassandra_consistency}, "
        f"password auth), {s.replicated_flink_taskmanagers} task managers (parallelism "
        f"{s.replicated_flink_parallelism}), {s.replicated_bridges} bridges, "
        f"{s.replicated_writers} writers, {s.replicated_query_api_workers} query API workers"
    ))


def _supervised(service: Service, state: SupervisorState, now: float) -> list[str]:
    """What the supervisor recorded for the service's processes: restarts, the last exit."""
    from stack.supervision import describe_record

    names = [spec.name for spec in service.processes()] or [service.name]
    out = []
    for name in names:
        record = state.processes.get(name)
        if record is not None and (text := describe_record(record, now)):
            out.append(text if name == service.name else f"{name}: {text}")
    return out


def _supervisor_row(settings: StackSettings, state: SupervisorState, now: float) -> tuple[str, str, str]:
    from stack import supervisor
    from stack.supervision import SupervisorSettings, describe_crl

    pid = process.read_pid(supervisor.spec(settings))
    crl = describe_crl(_crl_record(settings, state), now)
    if pid is None:
        word = "stopped" if SupervisorSettings().enabled else "disabled"
        return (supervisor.NAME, word, crl)
    restarts = sum(r.restarts for r in state.processes.values())
    rss = process.resident_memory_bytes(pid) / 2**20
    return (supervisor.NAME, "running", f"rss {rss:.0f} MiB restarts made {restarts}; {crl}")


def _status_row(service: Service) -> tuple[str, str, str]:
    specs = service.processes()
    if not specs:  # runs inside another service (the Flink job)
        running = service.running()
        return (service.name, "running" if running else "stopped", service.describe())
    pids = [process.read_pid(spec) for spec in specs]
    if all(pid is None for pid in pids):
        return (service.name, "stopped", "")
    rss = sum(process.resident_memory_bytes(pid) for pid in pids if pid is not None)
    state = "running" if all(pids) else "degraded"
    try:
        detail = service.describe()
    except Exception as exc:
        detail = f"({exc.__class__.__name__}: {exc})"
    return (service.name, state, f"rss {rss / 2**20:.0f} MiB {detail}".strip())


def _crl_record(settings: StackSettings, state: SupervisorState) -> CrlRecord:
    """The CRL's dates as they are on disk now (also while the supervisor is stopped)."""
    from gateway import pki
    from stack.supervision import CrlRecord

    record = CrlRecord(renewed_at=state.crl.renewed_at)
    try:
        this_update, next_update = pki.crl_dates(settings.pki_dir)
    except (OSError, ValueError) as exc:
        record.error = f"unreadable ({exc.__class__.__name__})"
        return record
    record.this_update = this_update.timestamp()
    record.next_update = next_update.timestamp() if next_update else None
    return record
