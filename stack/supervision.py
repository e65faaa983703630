"""The supervisor's policy and records, free of I/O loops: restart backoff, the give-up limit,
the state file `iot status` reads, and when the CRL is due for renewal."""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway.retry import Backoff

STATE_FILE = "supervisor.json"


class SupervisorSettings(BaseSettings):
    """IOT_SUPERVISOR_*: whether `iot up` starts the supervisor, and its timings."""

    model_config = SettingsConfigDict(env_prefix="IOT_SUPERVISOR_", extra="ignore")

    enabled: bool = True
    # Exits are seen at once (a pidfd per process); the scan only picks up pids that `iot up`
    # or a test started since.
    scan_interval_s: float = 5.0
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # Each delay is drawn within +-this fraction of its step, so restarts do not march in step.
    backoff_jitter: float = 0.25
    # More restarts than this within the window: give up on that process until `iot up`.
    max_restarts: int = 10
    restart_window_s: float = 900.0
    # A restarted process must answer its readiness check within this.
    ready_timeout_s: float = 180.0
    job_check_interval_s: float = 10.0
    crl_check_interval_s: float = 3600.0
    # Renew the CRL when less than this fraction of its validity remains.
    crl_renew_fraction: float = 0.5


@dataclass
class RestartPolicy:
    """The delays of every stage's backoff (gateway.retry: exponential, capped, jittered), its
    exponent the restarts still inside a sliding window; a give-up limit per window."""

    backoff: Backoff
    max_restarts: int
    window_s: float
    _attempts: deque[float] = field(default_factory=deque)

    @classmethod
    def from_settings(cls, settings: SupervisorSettings, rng: random.Random | None = None) -> RestartPolicy:
        backoff = Backoff(initial_s=settings.backoff_initial_s, max_s=settings.backoff_max_s,
                          jitter=settings.backoff_jitter, rng=rng or random.Random())
        return cls(backoff, settings.max_restarts, settings.restart_window_s)

    def _trim(self, now: float) -> None:
        while self._attempts and self._attempts[0] <= now - self.window_s:
            self._attempts.popleft()

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before the next attempt, recording it; None once the window's
        budget is spent (give up)."""
        self._trim(now)
        if len(self._attempts) >= self.max_restarts:
            return None
        # The window keeps the count: attempts that left it no longer lengthen the delay.
        delay = self.backoff.delay_after(len(self._attempts))
        self._attempts.append(now)
        return delay

    def attempts_in_window(self, now: float) -> int:
        self._trim(now)
        return len(self._attempts)

    def reset(self) -> None:
        self._attempts.clear()


def exit_reason(siginfo: Any | None) -> str:
    """'exit code N' / 'killed by SIGKILL' from os.waitid's answer; 'unknown' without one (the
    process was not the supervisor's child: its parent collected the status)."""
    if siginfo is None:
        return "exit status unknown (not the supervisor's child)"
    if siginfo.si_code == os.CLD_EXITED:
        return f"exit code {siginfo.si_status}"
    try:
        name = signal.Signals(siginfo.si_status).name
    except ValueError:
        name = f"signal {siginfo.si_status}"
    return f"killed by {name}" + (" (core dumped)" if siginfo.si_code == os.CLD_DUMPED else "")


def last_log_line(text: str, width: int = 160) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("---")]
    return lines[-1][:width] if lines else ""


@dataclass
class ProcessRecord:
    restarts: int = 0
    state: str = "watching"  # watching | restarting | gave up
    last_exit: str = ""
    last_log: str = ""
    last_exit_at: float | None = None
    last_restart_at: float | None = None
    next_attempt_at: float | None = None


@dataclass
class CrlRecord:
    this_update: float | None = None
    next_update: float | None = None
    renewed_at: float | None = None
    error: str = ""


@dataclass
class SupervisorState:
    """What the supervisor knows, written atomically to <run dir>/supervisor.json."""

    processes: dict[str, ProcessRecord] = field(default_factory=dict)
    crl: CrlRecord = field(default_factory=CrlRecord)
    started_at: float = field(default_factory=time.time)

    def record(self, name: str) -> ProcessRecord:
        return self.processes.setdefault(name, ProcessRecord())

    def save(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / STATE_FILE
        partial = path.with_suffix(".json.tmp")
        partial.write_text(json.dumps(asdict(self), indent=1, sort_keys=True))
        os.replace(partial, path)

    @classmethod
    def load(cls, run_dir: Path) -> SupervisorState:
        """The recorded state (restart counts survive a restart of the supervisor); empty if
        there is none or it cannot be read."""
        try:
            data = json.loads((run_dir / STATE_FILE).read_text())
            return cls(
                processes={k: ProcessRecord(**v) for k, v in data.get("processes", {}).items()},
                crl=CrlRecord(**data.get("crl", {})),
                started_at=float(data.get("started_at", time.time())),
            )
        except (OSError, ValueError, TypeError):
            return cls()


def crl_due(this_update: dt.datetime, next_update: dt.datetime | None, now: dt.datetime,
            fraction: float) -> bool:
    """Renew when less than `fraction` of the CRL's validity remains (or it has no nextUpdate)."""
    if next_update is None:
        return True
    return next_update - now < (next_update - this_update) * fraction


def describe_record(record: ProcessRecord, now: float) -> str:
    """The `iot status` words for one supervised process; empty when nothing happened."""
    if record.restarts == 0 and record.state == "watching" and not record.last_exit:
        return ""
    parts = [f"restarts {record.restarts}"]
    if record.last_exit:
        at = now if record.last_exit_at is None else record.last_exit_at
        when = time.strftime("%H:%M:%SZ", time.gmtime(at))
        parts.append(f"last exit {when}: {record.last_exit}")
        if record.last_log:
            parts.append(f"log: {record.last_log!r}")
    if record.state == "restarting" and record.next_attempt_at:
        parts.append(f"restarting in {max(0.0, record.next_attempt_at - now):.0f}s")
    elif record.state == "gave up":
        parts.append("supervisor gave up (run iot up)")
    return "; ".join(parts)


def describe_crl(record: CrlRecord, now: float) -> str:
    if record.error:
        return f"CRL: {record.error}"
    if record.this_update is None or record.next_update is None:
        return "CRL: not read yet"
    age_d = (now - record.this_update) / 86_400
    left_d = (record.next_update - now) / 86_400
    next_update = time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(record.next_update))
    return f"CRL age {age_d:.1f} d, next update {next_update} (in {left_d:.1f} d)"
