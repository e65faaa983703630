"""Background processes owned by the runner: start detached, record the pid, stop by pid.

Only processes whose pid file we wrote are ever signalled, and only while the pid still runs the
command we started (pids are reused), so `iot down` never touches anything it did not start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stack.errors import StackError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessSpec:
    """How to run one background process."""

    name: str
    argv: Sequence[str]
    run_dir: Path
    log_file: Path
    cwd: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    stop_timeout_s: float = 30.0
    # A distinctive piece of the running command line, to recognise our pid later; default the
    # longest argument. Needed when a launcher script exec()s a JVM whose command line differs.
    marker: str = ""

    @property
    def pid_file(self) -> Path:
        return self.run_dir / f"{self.name}.pid"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # A zombie has exited; only its parent's wait() is missing.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def recorded_pid(spec: ProcessSpec) -> int | None:
    """The pid the pid file names, running or not (no check, no side effect)."""
    try:
        return int(spec.pid_file.read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def read_pid(spec: ProcessSpec) -> int | None:
    """The pid of our running process, or None.

    The pid file of a process that died stays in place until the next start or stop: it is the
    record that the process exited without being stopped, which the supervisor acts on. A pid
    file whose pid now runs another program (pids are reused) is removed."""
    try:
        pid, marker = spec.pid_file.read_text().split("\n", 1)
        pid_num = int(pid)
    except (OSError, ValueError):
        return None
    marker = marker.strip()
    for _ in range(25):
        if not marker or not _alive(pid_num):
            return None
        cmdline = _cmdline(pid_num)
        if cmdline:
            if marker in cmdline:
                return pid_num
            break
        # Empty while a launcher (setpriv) execs the real program in place: that is our process
        # mid-exec, not a stale pid file. Seen as a spurious "exited while waiting for readiness".
        time.sleep(0.02)
    spec.pid_file.unlink(missing_ok=True)
    return None


def _write_pid_file(path: Path, pid: int, marker: str) -> None:
    """Atomically: a reader must never see a half-written pid file."""
    partial = path.with_suffix(".pid.tmp")
    partial.write_text(f"{pid}\n{marker}\n")
    os.replace(partial, path)


def is_running(spec: ProcessSpec) -> bool:
    return read_pid(spec) is not None


def start(spec: ProcessSpec) -> int:
    """Start the process detached (own session, output to its log); no-op if already running."""
    # Two `iot up` / test sessions racing must not both launch: the loser's process would die on
    # the port and take the pid file with it, orphaning the winner. Check-and-launch under a lock.
    with spec_lock(spec):
        existing = read_pid(spec)
        if existing is not None:
            log.info("%s already running (pid %d)", spec.name, existing)
            return existing
        return _launch(spec)


@contextlib.contextmanager
def spec_lock(spec: ProcessSpec) -> Iterator[None]:
    """The lock under which a process is launched, stopped or killed: the supervisor decides
    whether an exit was unexpected under it, so it never restarts what is being stopped."""
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    with open(spec.run_dir / f"{spec.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def exited_unexpectedly(spec: ProcessSpec) -> bool:
    """Whether the process is gone while its pid file still names it. Asked under the lock, so
    a stop in progress (which removes the pid file before releasing it) is never mistaken for a
    crash."""
    with spec_lock(spec):
        return recorded_pid(spec) is not None and read_pid(spec) is None


def relaunch(spec: ProcessSpec) -> int | None:
    """Start the process again after it exited unexpectedly: its pid file still names a process
    that is gone. None if it was stopped meanwhile (no pid file: leave it stopped); the running
    pid if someone else started it already."""
    with spec_lock(spec):
        if recorded_pid(spec) is None:
            return None
        existing = read_pid(spec)
        if existing is not None:
            return existing
        return _launch(spec)


def _launch(spec: ProcessSpec) -> int:
    spec.log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **spec.env}
    with open(spec.log_file, "ab") as out:
        out.write(f"\n--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting {spec.name}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            list(spec.argv),
            cwd=spec.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    marker = spec.marker or max(spec.argv, key=len)[:200]
    _write_pid_file(spec.pid_file, proc.pid, marker)
    log.info("started %s (pid %d), log %s", spec.name, proc.pid, spec.log_file)
    return proc.pid


def stop(spec: ProcessSpec) -> bool:
    """SIGTERM the process group, wait, then SIGKILL. True if something was stopped."""
    with spec_lock(spec):
        return _end(spec, grace_s=spec.stop_timeout_s)


def kill(spec: ProcessSpec) -> bool:
    """SIGKILL at once (failure tests; not a crash: the supervisor leaves it stopped). True if
    something was killed."""
    with spec_lock(spec):
        return _end(spec, grace_s=None)


# How long a SIGKILLed group is given to disappear (it cannot refuse; only the kernel is slow).
_KILL_WAIT_S = 5.0


def _end(spec: ProcessSpec, grace_s: float | None) -> bool:
    """SIGTERM and up to grace_s for the group to leave, then SIGKILL (at once when grace_s is
    None); the pid file goes either way. True if something was running."""
    pid = read_pid(spec)
    if pid is None:
        spec.pid_file.unlink(missing_ok=True)
        return False
    gone = False
    if grace_s is not None:
        log.info("stopping %s (pid %d)", spec.name, pid)
        _signal_group(pid, signal.SIGTERM)
        gone = _wait_gone(pid, grace_s, poll_s=0.2)
        if not gone:
            log.warning("%s did not stop within %.0fs, killing", spec.name, grace_s)
    if not gone:
        _signal_group(pid, signal.SIGKILL)
        _wait_gone(pid, _KILL_WAIT_S, poll_s=0.1)
        _reap(pid)  # a killed process's exit status tells nothing
    spec.pid_file.unlink(missing_ok=True)
    return True


def _wait_gone(pid: int, timeout_s: float, poll_s: float) -> bool:
    """Poll until the process is gone, a zombie counting as gone (its exit status is left for
    whoever waits on it); False if it outlived timeout_s."""
    deadline = time.monotonic() + timeout_s
    while _alive(pid):
        if time.monotonic() >= deadline:
            return False
        _reap(pid)
        time.sleep(poll_s)
    return True


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def resident_memory_bytes(pid: int) -> int:
    """RSS of a process and all its descendants."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending.extend(int(child) for child in children)
    return total


def require(condition: bool, message: str) -> None:
    if not condition:
        raise StackError(message)


def listening(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on the port (ours or not)."""
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def adopt(spec: ProcessSpec, needle: str) -> int | None:
    """Re-record the pid of our own process whose pid file was lost (a purge or a crash of the
    starter while it ran). Ours means: its command line contains needle, a path under our state
    directory that no other stack uses. Returns the pid if exactly one such process runs."""
    if read_pid(spec) is not None:
        return None
    found = [
        int(entry.name)
        for entry in Path("/proc").iterdir()
        if entry.name.isdigit() and int(entry.name) != os.getpid() and needle in _cmdline(int(entry.name))
    ]
    alive = [pid for pid in found if _alive(pid)]
    if len(alive) != 1:
        return None
    spec.run_dir.mkdir(parents=True, exist_ok=True)
    _write_pid_file(spec.pid_file, alive[0], needle)
    log.warning("%s: adopted running pid %d (its pid file was missing)", spec.name, alive[0])
    return alive[0]
