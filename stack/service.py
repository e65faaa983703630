"""What the runner knows about each service: how to install, start, check and initialise it."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, overload

import httpx

from stack import process
from stack.config import StackSettings
from stack.errors import StackError
from stack.process import ProcessSpec

log = logging.getLogger(__name__)


class NotReady(Exception):
    """A readiness check did not get its answer yet; the message names the check."""


def http_ready(url: str, timeout_s: float = 2.0) -> Any:
    """GET url and its JSON body (or None), or NotReady naming the URL and what went wrong."""
    try:
        response = httpx.get(url, timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise NotReady(f"GET {url}: {exc.__class__.__name__}") from exc
    if response.status_code != 200:
        raise NotReady(f"GET {url}: HTTP {response.status_code}")
    try:
        return response.json()
    except ValueError:
        return None


class Service(ABC):
    """One component of the stack. Subclasses stay small: config rendering, argv, one real check."""

    name: str
    # Services started in the same stage start together and are waited for together.
    stage: int = 0

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    @property
    def home(self) -> Path:
        """The service's own state under the stack dir (configuration, data)."""
        return self.settings.service_dir(self.name)

    def install(self) -> None:
        """Fetch binaries and render configuration; idempotent, may be slow the first time."""

    @abstractmethod
    def processes(self) -> list[ProcessSpec]:
        """The background processes of this service."""

    @abstractmethod
    def check_ready(self) -> None:
        """One real answer from the service (never a sleep); raise NotReady otherwise."""

    def initialise(self) -> None:
        """After readiness: create topics, keyspaces, realms... Idempotent."""

    def describe(self) -> str:
        """One line for `iot status` beyond running/stopped."""
        return ""

    def spec(self, name: str, argv: list[str], **kwargs: object) -> ProcessSpec:
        return ProcessSpec(
            name=name,
            argv=argv,
            run_dir=self.settings.run_dir,
            log_file=self.settings.log_dir / f"{name}.log",
            **kwargs,  # type: ignore[arg-type]
        )

    def own_ports(self) -> tuple[int, ...]:
        """Ports only this service binds: held by anything else, the start fails at once."""
        return ()

    def listen_host(self) -> str:
        """The address own_ports are bound on (a replicated node has a loopback address of its own)."""
        return "127.0.0.1"

    def adopt_marker(self) -> str | None:
        """A command-line piece unique to our own process (a path under the stack dir), so a
        process of ours whose pid file was lost is recorded again instead of started twice."""
        return None

    def start(self) -> None:
        marker = self.adopt_marker()
        if marker is not None:
            for spec in self.processes():
                process.adopt(spec, marker)
        if not self.running():
            busy = [port for port in self.own_ports()
                    if process.listening(port, self.listen_host())]
            if busy:
                raise StackError(
                    f"{self.name}: port(s) {busy} on {self.listen_host()} already in use by a "
                    f"process this stack did not start (no pid file under {self.settings.run_dir}); "
                    "stop it or change the port"
                )
        for spec in self.processes():
            process.start(spec)

    def stop(self) -> bool:
        stopped = False
        for spec in reversed(self.processes()):
            stopped |= process.stop(spec)
        return stopped

    def running(self) -> bool:
        return all(process.is_running(spec) for spec in self.processes())

    def wait_ready(self, timeout_s: float) -> float:
        """Poll check_ready until it passes; fail fast with the log tail if a process died."""
        started = time.monotonic()
        deadline = started + timeout_s
        last = "no check ran"
        while True:
            try:
                self.check_ready()
                elapsed = time.monotonic() - started
                log.info("%s ready in %.1fs", self.name, elapsed)
                return elapsed
            except NotReady as exc:
                last = str(exc)
            for spec in self.processes():
                if not process.is_running(spec):
                    raise StackError(
                        f"{self.name}: process {spec.name} exited while waiting for readiness "
                        f"({last}); last lines of {spec.log_file}:\n{process.log_tail(spec.log_file)}"
                    )
            if time.monotonic() > deadline:
                tails = "\n".join(
                    f"--- {spec.log_file}\n{process.log_tail(spec.log_file)}"
                    for spec in self.processes()
                )
                raise StackError(
                    f"{self.name} not ready after {timeout_s:.0f}s; failed check: {last}\n{tails}"
                )
            time.sleep(0.5)


class StatePath:
    """A file or directory of a service's own state (Service.home), declared once on the class:
    `conf_file = StatePath("mosquitto.conf")`."""

    def __init__(self, *parts: str) -> None:
        self.parts = parts

    @overload
    def __get__(self, service: None, owner: type[Service]) -> StatePath: ...

    @overload
    def __get__(self, service: Service, owner: type[Service]) -> Path: ...

    def __get__(self, service: Service | None, owner: type[Service]) -> StatePath | Path:
        return self if service is None else service.home.joinpath(*self.parts)


class NodeService(Service):
    """A service the replicated profile runs several of (stack/topology.py): node None is the
    default profile's single one, under the plain name; node N is `<name>-N`."""

    def __init__(self, settings: StackSettings, node: int | None = None) -> None:
        super().__init__(settings)
        self.node = node
        if node is not None:
            self.name = f"{self.name}-{node}"
