"""Mosquitto: the MQTT edge, TLS with client certificates on settings.mqtt_port (CONTRACT.md)."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import ssl
import threading
import uuid
from pathlib import Path
from string import Template

from gateway import pki, topics
from stack import process
from stack.config import REPO_ROOT, StackSettings
from stack.process import ProcessSpec
from stack.service import NotReady, Service
from stack.system import apt_install

log = logging.getLogger(__name__)

TEMPLATES = REPO_ROOT / "mosquitto"
# Mosquitto does not raise its own descriptor limit; 10,000 device connections need more than 1024.
NOFILE = 65536


class MosquittoService(Service):
    name = "mosquitto"
    stage = 0

    @property
    def home(self) -> Path:
        return self.settings.service_dir(self.name)

    @property
    def conf_file(self) -> Path:
        return self.home / "mosquitto.conf"

    def install(self) -> None:
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            log.info("installing mosquitto from Debian's packages")
            apt_install(["mosquitto", "mosquitto-clients"])
        self.render()

    def render(self) -> None:
        """The PKI the broker needs (CA, server, bridge, operator) and its conf + ACL files."""
        pki_dir = self.settings.pki_dir
        pki.ensure_ca(pki_dir)
        server = pki.server_identity(pki_dir)
        pki.service_identity(pki_dir, pki.BRIDGE_CN)
        pki.operator_identity(pki_dir)
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        values = {
            "user": getpass.getuser(),
            "home": str(self.home),
            "log_file": str(self.settings.log_dir / "mosquitto.log"),
            "port": str(self.settings.mqtt_port),
            "cafile": str(server.ca),
            "certfile": str(server.cert),
            "keyfile": str(server.key),
            "crlfile": str(pki.ca_paths(pki_dir)[2]),
            "bridge_user": pki.BRIDGE_CN,
            "operator_user": pki.OPERATOR_CN,
            "shared_group": topics.MQTT_SHARED_GROUP,
            "telemetry_filter": topics.MQTT_TELEMETRY_FILTER,
            "operator_filter": topics.MQTT_OPERATOR_FILTER,
        }
        rendered = (("mosquitto.conf.tmpl", self.conf_file), ("acl.tmpl", self.home / "acl"))
        for template, target in rendered:
            text = Template((TEMPLATES / template).read_text()).substitute(values)
            target.write_text(text)

    def processes(self) -> list[ProcessSpec]:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        argv = [binary, "-c", str(self.conf_file)]
        prlimit = shutil.which("prlimit")
        if prlimit:
            # prlimit execs mosquitto, so the recorded pid is the broker's own.
            argv = [prlimit, f"--nofile={_nofile_limit()}", *argv]
        return [self.spec("mosquitto", argv, stop_timeout_s=15.0)]

    def check_ready(self) -> None:
        """A real TLS handshake and CONNACK with the operator's certificate."""
        error = probe_connect(self.settings, pki.operator_identity(self.settings.pki_dir))
        if error is not None:
            raise NotReady(f"MQTT CONNECT to localhost:{self.settings.mqtt_port}: {error}")

    def describe(self) -> str:
        return f"mqtts://localhost:{self.settings.mqtt_port}"


def _nofile_limit() -> int:
    import resource

    # Without CAP_SYS_RESOURCE (containers) the inherited hard limit is the ceiling.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return NOFILE if hard == resource.RLIM_INFINITY else min(NOFILE, hard)


def probe_connect(
    settings: StackSettings, identity: pki.Identity, timeout_s: float = 5.0
) -> str | None:
    """None if the broker accepts a TLS MQTT connection with this identity, else the problem."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    done = threading.Event()
    outcome: list[str | None] = []

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object,
                   properties: object) -> None:
        outcome.append(None if not getattr(reason, "is_failure", False) else str(reason))
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    client.tls_set(
        ca_certs=str(identity.ca), certfile=str(identity.cert), keyfile=str(identity.key),
        tls_version=ssl.PROTOCOL_TLS_CLIENT,
    )
    client.on_connect = on_connect
    try:
        client.connect("localhost", settings.mqtt_port, keepalive=10)
        client.loop_start()
        if not done.wait(timeout_s):
            return "no CONNACK"
        return outcome[0]
    except (OSError, ssl.SSLError) as exc:
        return f"{exc.__class__.__name__}: {exc}"
    finally:
        client.disconnect()
        client.loop_stop()


def reload(settings: StackSettings) -> bool:
    """SIGHUP our broker so it re-reads the CRL (after a revocation); False if it is not running."""
    service = MosquittoService(settings)
    pid = process.read_pid(service.processes()[0])
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    log.info("sent SIGHUP to mosquitto (pid %d) to reload the CRL", pid)
    return True

