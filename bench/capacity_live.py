"""The capacity bench's live machinery: publisher processes (bench/capacity_fleet.py) started,
connected and released together; `mosquitto_sub` counting what it receives as it arrives; and
the private broker of Mosquitto alone (bench/mqtt_edge.py's settings)."""

from __future__ import annotations

import bisect
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from bench.mosquitto_clients import tls_args
from bench.mqtt_edge import bench_settings
from gateway import pki
from stack.config import REPO_ROOT, StackSettings
from stack.service import NotReady
from stack.services.mosquitto import MosquittoService, open_telemetry_gate

log = logging.getLogger(__name__)


def _line(stream: IO[bytes], timeout_s: float, what: str) -> dict[str, Any]:
    """One JSON line from a child, within `timeout_s` (a reader thread: pipes have no timeout)."""
    box: list[bytes] = []
    reader = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout_s)
    if not box or not box[0]:
        raise RuntimeError(f"publisher gave no {what} line within {timeout_s:.0f} s")
    parsed: dict[str, Any] = json.loads(box[0])
    return parsed


class Fleet:
    """`procs` publisher processes sharing `devices` devices and `rate` readings/s."""

    def __init__(
        self, port: int, pki_dir: Path, prefix: str, devices: int, rate: float, seconds: float,
        procs: int, log_dir: Path, window: int = 100,
    ) -> None:
        self.seconds = seconds
        self._procs: list[subprocess.Popen[bytes]] = []
        share = -(-devices // procs)
        for n, first in enumerate(range(0, devices, share)):
            count = min(share, devices - first)
            argv = [
                sys.executable, "-m", "bench.capacity_fleet", "--pki-dir", str(pki_dir),
                "--port", str(port), "--prefix", prefix, "--first", str(first),
                "--devices", str(count), "--rate", str(rate * count / devices),
                "--seconds", str(seconds), "--window", str(window),
            ]
            with (log_dir / f"{prefix}-{n}.log").open("wb") as err:
                self._procs.append(subprocess.Popen(
                    argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, cwd=REPO_ROOT,
                ))

    def wait_ready(self, timeout_s: float = 180.0) -> int:
        connected = 0
        for proc in self._procs:
            assert proc.stdout is not None
            connected += int(_line(proc.stdout, timeout_s, "ready")["ready"])
        return connected

    def go(self) -> None:
        for proc in self._procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()

    def result(self) -> dict[str, Any]:
        """The processes' figures summed (per device merged)."""
        parts = []
        for proc in self._procs:
            assert proc.stdout is not None
            parts.append(_line(proc.stdout, self.seconds + 120, "result"))
            proc.wait(30)
        merged: dict[str, Any] = {"by_device": {}}
        for part in parts:
            merged["by_device"].update(part.pop("by_device"))
            for key, value in part.items():
                if isinstance(value, bool):
                    merged[key] = merged.get(key, True) and value
                elif key in ("paced_s", "ticks"):
                    merged[key] = max(merged.get(key, 0), value)
                else:
                    merged[key] = merged.get(key, 0) + value
        return merged

    def kill(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


class LiveSubscriber:
    """`mosquitto_sub` at QoS 1 on every device's telemetry, as a bridge identity in a group of
    its own; a thread counts the lines as they come, stamped with the monotonic clock."""

    def __init__(self, settings: StackSettings) -> None:
        client_id = f"{pki.BRIDGE_PREFIX}cap-sub-{uuid.uuid4().hex[:6]}"
        identity = pki.service_identity(settings.pki_dir, client_id)
        self._argv = [
            shutil.which("mosquitto_sub") or "mosquitto_sub",
            "-h", "localhost", "-p", str(settings.mqtt_port), *tls_args(identity),
            "-V", "5", "-i", client_id, "-q", "1", "-D", "connect", "receive-maximum", "2000",
            "-t", f"$share/{client_id}/devices/+/telemetry",
        ]  # fmt: skip
        self._times: list[float] = []
        self._counts: list[int] = []
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def _read(self, stream: IO[bytes]) -> None:
        total = 0
        while chunk := stream.read1(1 << 16):  # type: ignore[attr-defined]
            total += chunk.count(b"\n")
            self._times.append(time.monotonic())
            self._counts.append(total)

    def count_at(self, moment: float) -> int:
        """Lines received by `moment` (monotonic)."""
        index = bisect.bisect_right(self._times, moment)
        return self._counts[index - 1] if index else 0

    def __enter__(self) -> LiveSubscriber:
        self._proc = subprocess.Popen(self._argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        assert self._proc.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self._proc.stdout,), daemon=True)
        self._reader.start()
        time.sleep(1.0)  # connected and subscribed
        if self._proc.poll() is not None:
            raise RuntimeError(f"mosquitto_sub exited with {self._proc.returncode}")
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                # A subscriber blocked writing to a full pipe does not act on SIGTERM.
                log.warning("mosquitto_sub did not stop on SIGTERM within 10 s; killed")
                self._proc.kill()
                self._proc.wait(10)
        if self._reader is not None:
            self._reader.join(10)


@contextlib.contextmanager
def mosquitto_alone_broker() -> Iterator[StackSettings]:
    """The stack's Mosquitto templates on a port and state directory of their own, no bridge
    on it (bench/mqtt_edge.py's broker); stopped afterwards if started here."""
    settings = bench_settings()
    broker = MosquittoService(settings)
    started = False
    try:
        broker.check_ready()
    except NotReady:
        broker.install()
        broker.start()
        broker.wait_ready(settings.ready_timeout_s)
        started = True
    try:
        open_telemetry_gate(settings)
        yield settings
    finally:
        if started:
            broker.stop()
