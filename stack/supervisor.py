"""The supervisor: restarts a process the runner started when it exits unexpectedly, resubmits the
Flink job when its cluster lost it, and renews the CRL before Mosquitto would refuse every client.

`iot up` starts it (again, if it is absent); `iot down` stops it before any service, so it never
restarts something being stopped. An exit is unexpected when the process's pid file still names
it: `iot down`, `stop` and `kill` remove the pid file under the same lock the supervisor decides
under. Exits are noticed at once through a pidfd per process; a slow scan picks up pids started
by others. Restarts back off exponentially (capped, with jitter) and stop after a number of
attempts per window. What happened is recorded in <run dir>/supervisor.json for `iot status`,
one line per event in .stack/logs/supervisor.log.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from flink_jobs import checkpoints
from gateway import pki
from stack import process
from stack.config import StackSettings
from stack.process import ProcessSpec
from stack.service import NotReady, Service
from stack.supervision import (
    RestartPolicy,
    SupervisorSettings,
    SupervisorState,
    crl_due,
    exit_reason,
    last_log_line,
)

log = logging.getLogger("stack.supervisor")

NAME = "supervisor"
JOB = "flink-job"
JOBMANAGER = "flink-jobmanager"


def spec(settings: StackSettings) -> ProcessSpec:
    return ProcessSpec(
        name=NAME,
        argv=[sys.executable, "-m", "stack.supervisor"],
        run_dir=settings.run_dir,
        log_file=settings.log_dir / f"{NAME}.log",
        env={"IOT_STACK_DIR": str(settings.stack_dir), "IOT_PROFILE": str(settings.profile),
             "PYTHONUNBUFFERED": "1"},
        stop_timeout_s=20.0,
        marker="-m stack.supervisor",
    )


def ensure_running(settings: StackSettings) -> int | None:
    """Start the supervisor unless it runs or IOT_SUPERVISOR_ENABLED=false; its pid or None."""
    if not SupervisorSettings().enabled:
        log.info("supervisor disabled (IOT_SUPERVISOR_ENABLED=false)")
        return None
    return process.start(spec(settings))


def stop(settings: StackSettings) -> bool:
    return process.stop(spec(settings))


@dataclass(frozen=True)
class Target:
    service: Service
    spec: ProcessSpec


async def _wait(event: asyncio.Event, timeout_s: float) -> None:
    """Until the event is set or the timeout passes. asyncio.timeout, not wait_for: Python 3.11's
    wait_for can swallow a cancellation that races the event, and the supervisor would then
    never stop on SIGTERM (seen in the unit tests)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()


def _collect(pid: int, pidfd: int | None = None) -> Any | None:
    """The exit status of a child of ours (the processes we restarted), or None."""
    try:
        if pidfd is not None:
            return os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOHANG)
        return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
    except (ChildProcessError, OSError):
        return None


class Supervisor:
    def __init__(self, stack: StackSettings, settings: SupervisorSettings,
                 services: Sequence[Service], rng: random.Random | None = None) -> None:
        self.stack = stack
        self.settings = settings
        self.rng = rng or random.Random()
        self.targets = {s.name: Target(svc, s) for svc in services for s in svc.processes()}
        from stack.services.apps import FlinkJobService

        self.job_service = next((s for s in services if isinstance(s, FlinkJobService)), None)
        self.flink = next((svc for svc in services if svc.name == "flink"), None)
        self.state = SupervisorState.load(stack.run_dir)
        self.state.started_at = time.time()
        self.policies = {name: RestartPolicy.from_settings(settings, self.rng)
                         for name in [*self.targets, JOB]}
        self.watched: dict[str, int] = {}
        self.pidfds: dict[str, int] = {}
        self.exits: dict[str, Any] = {}
        self.restarting: dict[str, asyncio.Task[None]] = {}
        self.wake = asyncio.Event()
        self.job_check = asyncio.Event()
        self.job_seen = False
        self.job_lost = False

    # --- watching processes ----------------------------------------------------------------

    async def watch(self) -> None:
        while True:
            self.wake.clear()
            await self.scan()
            await _wait(self.wake, self.settings.scan_interval_s)

    async def scan(self) -> None:
        for name, target in self.targets.items():
            if name in self.restarting:
                continue
            if process.recorded_pid(target.spec) is None:
                self._unwatch(name)  # not started, or stopped on purpose
                continue
            pid = await asyncio.to_thread(process.read_pid, target.spec)
            if pid is not None:
                if self.watched.get(name) != pid or name not in self.pidfds:
                    self._watch(name, pid)
                continue
            if name in self.watched:
                old = self.watched[name]
                self._unwatch(name)
                self.restarting[name] = asyncio.create_task(self._restart(target, old))

    def _watch(self, name: str, pid: int) -> None:
        self._unwatch(name)
        self.watched[name] = pid
        record = self.state.record(name)
        if record.state != "watching":
            # Started again by someone else (`iot up`): a fresh budget.
            record.state, record.next_attempt_at = "watching", None
            self.policies[name].reset()
            self.save()
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            self.wake.set()  # gone already: the next scan restarts it
            return
        self.pidfds[name] = fd
        asyncio.get_running_loop().add_reader(fd, self._on_exit, name, pid, fd)

    def _on_exit(self, name: str, pid: int, fd: int) -> None:
        if self.pidfds.get(name) == fd:
            self.exits[name] = _collect(pid, fd)
        self._unwatch(name, keep_pid=True)
        self.wake.set()

    def _unwatch(self, name: str, keep_pid: bool = False) -> None:
        fd = self.pidfds.pop(name, None)
        if fd is not None:
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
        if not keep_pid:
            self.watched.pop(name, None)

    async def _restart(self, target: Target, old_pid: int) -> None:
        name = target.spec.name
        info = self.exits.pop(name, None) or _collect(old_pid)
        try:
            if not await asyncio.to_thread(process.exited_unexpectedly, target.spec):
                log.info("%s (pid %d) was stopped or restarted by the runner", name, old_pid)
                return
            await self._restart_loop(target, old_pid, info)
        finally:
            self.restarting.pop(name, None)
            self.wake.set()

    async def _restart_loop(self, target: Target, old_pid: int, info: Any | None) -> None:
        name = target.spec.name
        record = self.state.record(name)
        record.last_exit = exit_reason(info)
        record.last_log = last_log_line(process.log_tail(target.spec.log_file, 8))
        record.last_exit_at = time.time()
        policy = self.policies[name]
        while True:
            delay = policy.next_delay(time.monotonic())
            if delay is None:
                record.state, record.next_attempt_at = "gave up", None
                self.save()
                log.error("%s: %d restarts within %.0fs; giving up until `iot up` starts it",
                          name, policy.max_restarts, policy.window_s)
                return
            record.state, record.next_attempt_at = "restarting", time.time() + delay
            self.save()
            log.warning("%s (pid %d) exited unexpectedly: %s; last log line %r; restarting in "
                        "%.1fs", name, old_pid, record.last_exit, record.last_log, delay)
            await asyncio.sleep(delay)
            began = time.monotonic()
            pid = await asyncio.to_thread(process.relaunch, target.spec)
            if pid is None:
                log.info("%s was stopped meanwhile; leaving it stopped", name)
                record.state, record.next_attempt_at = "watching", None
                self.save()
                return
            problem = await self._ready(target)
            if problem is None:
                record.restarts += 1
                record.state, record.next_attempt_at = "watching", None
                record.last_restart_at = time.time()
                self.watched[name] = pid
                self.save()
                log.info("restarted %s: pid %d (was %d, %s) ready in %.1fs; restart %d, %d in "
                         "the last %.0fs", name, pid, old_pid, record.last_exit,
                         time.monotonic() - began, record.restarts,
                         policy.attempts_in_window(time.monotonic()), policy.window_s)
                if name == JOBMANAGER:
                    # A new job manager has no job: resubmit it, as `iot up` would.
                    self.job_lost = True
                    self.job_check.set()
                return
            old_pid = pid
            again = _collect(pid)
            record.last_exit = f"{exit_reason(again)}: {problem}" if again else problem
            record.last_log = last_log_line(process.log_tail(target.spec.log_file, 8))
            record.last_exit_at = time.time()

    async def _ready(self, target: Target) -> str | None:
        """None once the service answers (or keeps running unready past the timeout); else why
        the restart failed."""
        deadline = time.monotonic() + self.settings.ready_timeout_s
        last = "no check ran"
        while True:
            try:
                await asyncio.to_thread(target.service.check_ready)
                return None
            except NotReady as exc:
                last = str(exc)
            except Exception as exc:  # a check that breaks must not end the supervisor
                last = f"{exc.__class__.__name__}: {exc}"
            if await asyncio.to_thread(process.read_pid, target.spec) is None:
                return f"exited again while starting ({last})"
            if time.monotonic() > deadline:
                log.warning("%s runs but is not ready after %.0fs (%s); watching it",
                            target.spec.name, self.settings.ready_timeout_s, last)
                return None
            await asyncio.sleep(1.0)

    # --- the Flink job ---------------------------------------------------------------------

    async def watch_job(self) -> None:
        """Resubmit the job (from its newest checkpoint) when a running cluster lost it: its job
        manager restarted, or the job failed for good."""
        if self.job_service is None:
            return
        while True:
            self.job_check.clear()
            try:
                await self._check_job()
            except Exception:
                log.exception("checking the Flink job failed")
            await _wait(self.job_check, self.settings.job_check_interval_s)

    def _job_state(self) -> str | None:
        """The state of the job's newest run on the cluster ('absent' if it has none there), or
        None when the cluster cannot tell (down, restarting)."""
        from flink_jobs.config import FlinkJobSettings
        from flink_jobs.rest import FlinkRest

        rest = FlinkRest(f"http://localhost:{self.stack.flink_rest_port}")
        try:
            runs = [job for job in rest.jobs() if job["name"] == FlinkJobSettings().job_name]
        except Exception:
            return None
        finally:
            rest.close()
        if not runs:
            return "absent"
        return str(max(runs, key=lambda job: job.get("start-time", 0))["state"])

    async def _check_job(self) -> None:
        if JOBMANAGER in self.restarting or self.flink is None:
            return
        jobmanager = self.targets.get(JOBMANAGER)
        if jobmanager is None or await asyncio.to_thread(process.read_pid, jobmanager.spec) is None:
            return
        state = await asyncio.to_thread(self._job_state)
        if state is None:
            return
        if state == "CANCELED":
            # Cancelled on purpose (by hand, or to deploy a new version): not ours to bring back.
            if self.job_seen or self.job_lost:
                log.info("%s was cancelled; not resubmitting it (iot up or iot flink-job does)", JOB)
            self.job_seen = self.job_lost = False
            return
        if state not in ("absent", "FAILED", "FINISHED"):
            self.job_seen, self.job_lost = True, False
            return
        if not (self.job_seen or self.job_lost):
            return  # never ran while we watched (started with --skip flink-job): not ours to start
        try:
            await asyncio.to_thread(self.flink.check_ready)
        except NotReady:
            return  # no task manager yet; the next check submits
        await self._resubmit_job()

    async def _resubmit_job(self) -> None:
        assert self.job_service is not None
        from flink_jobs.config import FlinkJobSettings

        record = self.state.record(JOB)
        policy = self.policies[JOB]
        delay = policy.next_delay(time.monotonic())
        if delay is None:
            if record.state != "gave up":
                record.state = "gave up"
                self.save()
                log.error("%s: %d resubmissions within %.0fs; giving up until `iot up`", JOB,
                          policy.max_restarts, policy.window_s)
            return
        record.state, record.next_attempt_at = "restarting", time.time() + delay
        record.last_exit, record.last_exit_at = "job absent from the Flink cluster", time.time()
        self.save()
        await asyncio.sleep(delay)
        job = FlinkJobSettings()
        latest = checkpoints.latest_checkpoint(job.checkpoint_dir, job.job_name)
        log.warning("%s: the job is gone from the cluster; resubmitting from %s", JOB,
                    latest.path if latest else "no checkpoint")
        code = await self._submit()
        if code == 0:
            self.job_lost = False
            record.restarts += 1
            record.state, record.next_attempt_at = "watching", None
            record.last_restart_at = time.time()
            log.info("resubmitted %s from %s; resubmission %d", JOB,
                     latest.path if latest else "no checkpoint", record.restarts)
        else:
            record.last_exit = f"submission failed with exit code {code}"
            record.last_log = last_log_line(process.log_tail(self.job_service.log_file, 8))
            log.error("%s: submission failed (exit code %d); see %s", JOB, code,
                      self.job_service.log_file)
        self.save()

    async def _submit(self) -> int:
        """One `python -m flink_jobs`, under the lock `iot up` submits under (never twice)."""
        service = self.job_service
        assert service is not None
        argv, env = service.submit_command()
        service.submit_lock_file.parent.mkdir(parents=True, exist_ok=True)
        # Local files, opened in microseconds: not worth a thread.
        with (open(service.submit_lock_file, "w") as lock,  # noqa: ASYNC230
              open(service.log_file, "ab") as out):  # noqa: ASYNC230
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(1.0)
            child = await asyncio.create_subprocess_exec(
                *argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
            try:
                async with asyncio.timeout(300):
                    return await child.wait()
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    child.kill()
                await child.wait()
                raise

    # --- the CRL ---------------------------------------------------------------------------

    async def crl_timer(self) -> None:
        while True:
            await asyncio.to_thread(self.check_crl)
            self.save()
            await asyncio.sleep(self.settings.crl_check_interval_s)

    def check_crl(self, now: dt.datetime | None = None) -> bool:
        """Renew the CRL and reload Mosquitto when it is due; True if it was renewed."""
        from stack.services import mosquitto

        record = self.state.crl
        crl_path = pki.ca_paths(self.stack.pki_dir)[2]
        if not crl_path.exists():
            record.error = f"no CRL at {crl_path} yet"
            return False
        renewed = False
        try:
            this_update, next_update = pki.crl_dates(self.stack.pki_dir)
            if crl_due(this_update, next_update, now or dt.datetime.now(dt.UTC),
                       self.settings.crl_renew_fraction):
                pki.renew_crl(self.stack.pki_dir)
                reloaded = mosquitto.reload(self.stack)
                old = next_update
                this_update, next_update = pki.crl_dates(self.stack.pki_dir)
                record.renewed_at = time.time()
                renewed = True
                log.info("renewed the CRL (next update was %s, now %s); %s", old, next_update,
                         "mosquitto reloaded it" if reloaded else "mosquitto not running")
            record.this_update = this_update.timestamp()
            record.next_update = next_update.timestamp() if next_update else None
            record.error = ""
        except Exception as exc:
            record.error = f"{exc.__class__.__name__}: {exc}"
            log.exception("checking the CRL %s failed", crl_path)
        return renewed

    # --- lifecycle -------------------------------------------------------------------------

    def save(self) -> None:
        try:
            self.state.save(self.stack.run_dir)
        except OSError:
            log.exception("writing the supervisor state failed")

    def close(self) -> None:
        for name in list(self.pidfds):
            self._unwatch(name)
        self.save()


async def run(stack: StackSettings, settings: SupervisorSettings,
              services: Sequence[Service] | None = None) -> None:
    """Until SIGTERM/SIGINT: watch, restart, renew; then abandon restarts in flight and exit."""
    from stack.services import all_services

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    supervisor = Supervisor(stack, settings, services if services is not None else all_services(stack))
    log.info("watching %s; settings %s", ", ".join(supervisor.targets), settings.model_dump_json())
    tasks = [asyncio.create_task(coro) for coro in
             (supervisor.watch(), supervisor.watch_job(), supervisor.crl_timer())]
    stop_task = asyncio.create_task(stopping.wait())
    done, _ = await asyncio.wait([stop_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in done:
        if task is not stop_task and task.exception() is not None:
            log.error("supervisor task failed", exc_info=task.exception())
    log.info("stopping; %d restart(s) in flight abandoned", len(supervisor.restarting))
    pending = [*tasks, stop_task, *supervisor.restarting.values()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    supervisor.close()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    asyncio.run(run(StackSettings(), SupervisorSettings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
