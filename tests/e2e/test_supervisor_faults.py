"""The supervisor brings a killed component back with nothing done by hand: the process dies
(SIGKILL, its pid file left as a crash leaves it), the supervisor restarts it (and, for the job
manager, resubmits the job from its newest checkpoint), and the aggregates equal the oracle."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from harness.query_api import password_token
from stack import process, supervisor
from stack.config import StackSettings
from stack.supervision import SupervisorState
from tests.e2e import fault_harness as harness

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(services: Any) -> Iterator[StackSettings]:
    with services(harness.SERVICES) as settings:
        spec = supervisor.spec(settings)
        started_here = not process.is_running(spec)
        if started_here:
            process.start(spec)
        try:
            yield settings
        finally:
            if started_here:
                process.stop(spec)


def _restarts(stack: StackSettings, name: str) -> int:
    record = SupervisorState.load(stack.run_dir).processes.get(name)
    return record.restarts if record else 0


@pytest.mark.parametrize("name", ["bridge", "flink-jobmanager"])
def test_the_supervisor_restarts_a_killed_component(stack: StackSettings, name: str) -> None:
    spec = harness.process_spec(stack, name)
    before = _restarts(stack, name)

    def crash() -> None:
        pid = process.read_pid(spec)
        assert pid is not None, f"{name} is not running"
        os.killpg(pid, signal.SIGKILL)  # a crash: nothing else is done by hand
        deadline = time.monotonic() + 240
        while _restarts(stack, name) == before:
            assert time.monotonic() < deadline, f"the supervisor did not restart {name}"
            time.sleep(1)

    with harness.fleet(stack, f"sup-{name}", 10) as run:
        harness.stream(run, 40, 50.0, [(12.0, crash)])
        outcome = harness.verify(run, password_token("client1"))
    harness.record(stack, f"supervisor-{name}", **outcome.__dict__)
    state = SupervisorState.load(stack.run_dir)
    assert state.processes[name].restarts == before + 1
    assert state.processes[name].state == "watching"
    assert "SIGKILL" in state.processes[name].last_exit or "unknown" in state.processes[name].last_exit
    if name == "flink-jobmanager":
        assert state.processes[supervisor.JOB].state == "watching"
