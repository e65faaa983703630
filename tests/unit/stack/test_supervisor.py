"""The supervisor against real processes of its own (sleep, sh): restarts after a crash, leaves a
stopped process alone, gives up per window, records why; renews a CRL that expires soon."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from gateway import pki
from gateway.retry import Backoff
from stack import process
from stack.config import StackSettings
from stack.process import ProcessSpec
from stack.service import NotReady, Service
from stack.supervision import RestartPolicy, SupervisorSettings, SupervisorState, crl_due
from stack.supervisor import Supervisor


class _Fake(Service):
    name = "fake"

    def __init__(self, settings: StackSettings, argv: list[str]) -> None:
        super().__init__(settings)
        self.argv = argv

    def processes(self) -> list[ProcessSpec]:
        return [self.spec("fake", self.argv, marker=self.argv[-1])]

    def check_ready(self) -> None:
        if not process.is_running(self.processes()[0]):
            raise NotReady("fake not running")


FAST = SupervisorSettings(scan_interval_s=0.2, backoff_initial_s=0.05, backoff_max_s=0.2,
                          backoff_jitter=0.1, max_restarts=3, restart_window_s=60,
                          ready_timeout_s=5, crl_check_interval_s=3600)


@pytest.fixture
def stack(tmp_path: Path) -> StackSettings:
    return StackSettings(stack_dir=tmp_path)


def _sleeper(stack: StackSettings) -> _Fake:
    # A distinctive argument: the marker that tells our process from any other sleep.
    return _Fake(stack, [sys.executable, "-c", "import time; time.sleep(120)", f"#{stack.stack_dir}"])


def _run_until(supervisor: Supervisor, steps: Callable[[], Iterator[Callable[[], bool]]],
               timeout_s: float = 20.0) -> None:
    """Run the supervisor's watch loop; each step does something, then waits for its condition."""

    async def main() -> None:
        watcher = asyncio.create_task(supervisor.watch())
        try:
            for condition in steps():
                deadline = time.monotonic() + timeout_s
                while not condition():
                    assert time.monotonic() < deadline, "condition not met in time"
                    await asyncio.sleep(0.05)
        finally:
            watcher.cancel()
            tasks = [watcher, *supervisor.restarting.values()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            supervisor.close()

    asyncio.run(main())


def test_a_killed_process_is_restarted_and_the_exit_recorded(stack: StackSettings) -> None:
    service = _sleeper(stack)
    spec = service.processes()[0]
    first = process.start(spec)
    supervisor = Supervisor(stack, FAST, [service], random.Random(1))
    pids: list[int] = []

    def steps() -> Iterator[Callable[[], bool]]:
        yield lambda: supervisor.watched.get("fake") == first and "fake" in supervisor.pidfds
        os.kill(first, signal.SIGKILL)
        yield lambda: (process.read_pid(spec) not in (None, first)
                       and supervisor.state.record("fake").restarts == 1)
        pids.append(process.read_pid(spec) or 0)
        # The restarted process is the supervisor's child: its exit status is exact.
        os.kill(pids[0], signal.SIGTERM)
        yield lambda: supervisor.state.record("fake").restarts == 2

    try:
        _run_until(supervisor, steps)
        record = SupervisorState.load(stack.run_dir).processes["fake"]
        assert record.restarts == 2 and record.state == "watching"
        assert record.last_exit == "killed by SIGTERM"
        assert record.last_exit_at is not None and record.last_restart_at is not None
    finally:
        process.stop(spec)


def test_a_process_stopped_on_purpose_stays_stopped(stack: StackSettings) -> None:
    service = _sleeper(stack)
    spec = service.processes()[0]
    pid = process.start(spec)
    supervisor = Supervisor(stack, FAST, [service], random.Random(2))

    def steps() -> Iterator[Callable[[], bool]]:
        yield lambda: "fake" in supervisor.pidfds
        assert process.stop(spec)
        yield lambda: "fake" not in supervisor.watched
        started = time.monotonic()
        yield lambda: time.monotonic() - started > 1.0

    _run_until(supervisor, steps)
    assert process.recorded_pid(spec) is None and not process.is_running(spec)
    assert supervisor.state.record("fake").restarts == 0
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_crash_loop_is_given_up_with_its_exit_code(stack: StackSettings) -> None:
    marker = f"#{stack.stack_dir}"
    script = "import sys, time; time.sleep(0.3); print('boom: no config', flush=True); sys.exit(3)"
    service = _Fake(stack, [sys.executable, "-c", script, marker])
    spec = service.processes()[0]
    process.start(spec)
    supervisor = Supervisor(stack, FAST, [service], random.Random(3))

    def steps() -> Iterator[Callable[[], bool]]:
        yield lambda: supervisor.state.record("fake").state == "gave up"

    _run_until(supervisor, steps)
    record = SupervisorState.load(stack.run_dir).processes["fake"]
    assert record.state == "gave up"
    assert "exit code 3" in record.last_exit or "exited again" in record.last_exit
    assert record.last_log == "boom: no config"


def test_backoff_grows_to_its_cap_with_jitter_and_gives_up_per_window() -> None:
    backoff = Backoff(initial_s=1, max_s=8, jitter=0.25, rng=random.Random(4))
    policy = RestartPolicy(backoff, max_restarts=6, window_s=100)
    delays = [policy.next_delay(10.0 + i) for i in range(6)]
    bases = [1, 2, 4, 8, 8, 8]
    assert all(d is not None and base * 0.75 <= d <= base * 1.25
               for d, base in zip(delays, bases, strict=True))
    assert policy.next_delay(20.0) is None  # budget of the window spent
    assert policy.next_delay(111.0) is not None  # the first attempts left the window
    assert backoff.attempts == 0  # the window keeps the count, not the backoff


def test_a_restart_after_the_window_emptied_starts_from_the_initial_delay() -> None:
    policy = RestartPolicy(Backoff(initial_s=1, max_s=8, jitter=0.25), max_restarts=6, window_s=100)
    for i in range(4):
        policy.next_delay(float(i))
    delay = policy.next_delay(500.0)
    assert delay is not None and 0.75 <= delay <= 1.25


def _crl_expiring_in(pki_dir: Path, left: dt.timedelta) -> None:
    ca_key = serialization.load_pem_private_key(pki.ca_paths(pki_dir)[1].read_bytes(), None)
    ca = pki.load_cert(pki.ca_paths(pki_dir)[0])
    now = dt.datetime.now(dt.UTC)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(now - dt.timedelta(days=30) + left).next_update(now + left)
           .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pki.ca_paths(pki_dir)[2].write_bytes(crl.public_bytes(serialization.Encoding.PEM))


def test_a_crl_about_to_expire_is_renewed(stack: StackSettings) -> None:
    pki.ensure_ca(stack.pki_dir)
    supervisor = Supervisor(stack, FAST, [])
    assert not supervisor.check_crl()  # fresh: nothing to do
    _crl_expiring_in(stack.pki_dir, dt.timedelta(days=3))
    assert supervisor.check_crl()
    _, next_update = pki.crl_dates(stack.pki_dir)
    assert next_update is not None and next_update - dt.datetime.now(dt.UTC) > dt.timedelta(days=29)
    record = supervisor.state.crl
    assert record.next_update == next_update.timestamp() and record.renewed_at is not None
    assert not supervisor.check_crl()


def test_renewal_is_due_below_the_configured_fraction() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(days=30)
    assert not crl_due(start, end, start + dt.timedelta(days=14), 0.5)
    assert crl_due(start, end, start + dt.timedelta(days=16), 0.5)
    assert crl_due(start, end, start + dt.timedelta(days=8), 0.75)
    assert crl_due(start, None, start, 0.5)


def test_status_words_name_the_restarts_and_the_last_exit(tmp_path: Path) -> None:
    from stack.supervision import ProcessRecord, describe_crl, describe_record

    state = SupervisorState()
    state.processes["bridge"] = ProcessRecord(restarts=2, state="restarting", last_exit="killed by SIGKILL",
                                              last_exit_at=0.0, next_attempt_at=104.0)
    state.save(tmp_path)
    loaded = SupervisorState.load(tmp_path)
    text = describe_record(loaded.processes["bridge"], now=100.0)
    assert text == "restarts 2; last exit 00:00:00Z: killed by SIGKILL; restarting in 4s"
    assert describe_record(ProcessRecord(), now=0.0) == ""
    loaded.crl.this_update, loaded.crl.next_update = 0.0, 30 * 86_400.0
    assert describe_crl(loaded.crl, now=86_400.0).startswith("CRL age 1.0 d, next update 1970-01-31")
    (tmp_path / "supervisor.json").write_text("{not json")
    assert SupervisorState.load(tmp_path).processes == {}


def test_the_supervisor_program_stops_on_sigterm(stack: StackSettings) -> None:
    """`python -m stack.supervisor` as `iot up` starts it: running, then SIGTERM ends it at once."""
    from stack import supervisor

    spec = supervisor.spec(stack)
    pid = process.start(spec)
    deadline = time.monotonic() + 30
    while "watching" not in process.log_tail(spec.log_file):
        assert time.monotonic() < deadline, process.log_tail(spec.log_file)
        time.sleep(0.1)
    started = time.monotonic()
    assert supervisor.stop(stack)
    assert time.monotonic() - started < 5
    assert not process.is_running(spec)
    assert "stopping; 0 restart(s) in flight abandoned" in process.log_tail(spec.log_file)
    assert os.waitpid(pid, 0) == (pid, 0)  # exited by itself, with status 0
