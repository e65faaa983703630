"""Services made ready for a test or a benchmark: reused when they answer, else started, and
those started here stopped at the end (`stop_started`)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from stack import orchestrator, process
from stack.config import StackSettings
from stack.service import NotReady, Service
from stack.services import all_services

log = logging.getLogger(__name__)


def _answers(service: Service) -> bool:
    try:
        service.check_ready()
    except NotReady:
        return False
    return True


def _our_children(service: Service) -> list[int]:
    """Pids of the service's processes launched by this very test process.

    Two sessions racing to start the same service both call `up`; only the one whose Popen
    won owns the process, and that process is its child (setpriv/java exec in place).
    """
    pids = [process.read_pid(spec) for spec in service.processes()]
    mine = []
    for pid in pids:
        if pid is None:
            continue
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid():
            mine.append(pid)
    return mine


@contextlib.contextmanager
def ensure_services(
    names: Iterable[str], settings: StackSettings | None = None
) -> Iterator[StackSettings]:
    """Make the named services ready for the block; afterwards stop only those started here.

    A service that already answers its readiness check (a `make up` stack, another test
    session) is reused as it is.
    """
    settings = settings or StackSettings()
    wanted = set(names)
    services = [s for s in all_services(settings) if s.name in wanted]
    unknown = wanted - {s.name for s in services}
    if unknown:
        raise KeyError(f"unknown services {sorted(unknown)}")
    missing = {s.name for s in services if not _answers(s)}
    if missing:
        log.info("starting %s for the tests", ", ".join(sorted(missing)))
        try:
            orchestrator.up(settings, only=missing)
        finally:
            # Also on failure: never leave behind what we launched. Stopped at the end of the
            # session, not of the block, so later test modules reuse what is already up.
            _STARTED.extend(s for s in services if s.name in missing and _our_children(s))
    yield settings


_STARTED: list[Service] = []



def stop_started() -> None:
    """Stop what ensure_services started, newest first (the end of a test session or a benchmark)."""
    for service in reversed(_STARTED):
        log.info("stopping %s started here", service.name)
        service.stop()
    _STARTED.clear()
