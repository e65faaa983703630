"""Mosquitto: the MQTT edge, TLS with client certificates on settings.mqtt_port (docs/contract.md)."""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import ssl
import subprocess
import threading
import uuid
from pathlib import Path
from string import Template

from gateway import pki, topics
from stack import process
from stack.config import REPO_ROOT, StackSettings
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import NotReady, Service, StatePath
from stack.system import apt_install

log = logging.getLogger(__name__)

TEMPLATES = REPO_ROOT / "mosquitto"
# The broker's access rules (a Mosquitto 2.0 plugin, built here against Debian's headers).
PLUGIN_SOURCE = TEMPLATES / "iot_edge.c"
PLUGIN_HEADERS = ("/usr/include/mosquitto_broker.h", "/usr/include/mosquitto.h")
# Mosquitto does not raise its own descriptor limit; 10,000 device connections need more than 1024.
NOFILE = 65536


class MosquittoService(Service):
    name = "mosquitto"
    stage = 0
    conf_file = StatePath("mosquitto.conf")
    plugin_file = StatePath("iot_edge.so")

    def install(self) -> None:
        if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
            log.info("installing mosquitto from Debian's packages")
            apt_install(["mosquitto", "mosquitto-clients"])
        missing = [p for p in PLUGIN_HEADERS if not Path(p).exists()]
        if missing or shutil.which("cc") is None:
            log.info("installing the headers and compiler for the broker's plugin (%s)",
                     ", ".join(missing) or "cc")
            apt_install(["mosquitto-dev", "libmosquitto-dev", "gcc", "libc6-dev"])
        build_plugin(self.plugin_file)
        self.render()

    def render(self) -> None:
        """The PKI the broker needs (CA, server, bridge, operator, probe) and its conf file."""
        pki_dir = self.settings.pki_dir
        pki.ensure_ca(pki_dir)
        server = pki.server_identity(pki_dir)
        pki.bridge_identity(pki_dir)
        pki.operator_identity(pki_dir)
        pki.probe_identity(pki_dir)
        (self.home / "data").mkdir(parents=True, exist_ok=True)
        # The old access-list file of earlier versions grants every SUBSCRIBE; never leave it.
        (self.home / "acl").unlink(missing_ok=True)
        values = conf_values(self.settings, server, self.home, self.plugin_file)
        text = Template((TEMPLATES / "mosquitto.conf.tmpl").read_text()).substitute(values)
        self.conf_file.write_text(text)

    def processes(self) -> list[ProcessSpec]:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        argv = [binary, "-c", str(self.conf_file)]
        prlimit = shutil.which("prlimit")
        if prlimit:
            # prlimit execs mosquitto, so the recorded pid is the broker's own.
            argv = [prlimit, f"--nofile={_nofile_limit()}", *argv]
        return [self.spec("mosquitto", argv, stop_timeout_s=15.0)]

    def check_ready(self) -> None:
        """A real TLS handshake and CONNACK, as an identity with no session worth keeping."""
        error = probe_connect(self.settings, pki.probe_identity(self.settings.pki_dir))
        if error is not None:
            raise NotReady(f"MQTT CONNECT to localhost:{self.settings.mqtt_port}: {error}")

    def describe(self) -> str:
        return f"mqtts://localhost:{self.settings.mqtt_port}"


def conf_values(
    settings: StackSettings, server: pki.Identity, home: Path, plugin: Path
) -> dict[str, str]:
    """What mosquitto.conf.tmpl is rendered with (docker/mosquitto/ mirrors it for containers)."""
    prefix, suffix = topics.MQTT_TELEMETRY_TEMPLATE.split("{device_id}")
    return {
        "user": getpass.getuser(),
        "home": str(home),
        "log_file": str(settings.log_dir / "mosquitto.log"),
        "port": str(settings.mqtt_port),
        "cafile": str(server.ca),
        "certfile": str(server.cert),
        "keyfile": str(server.key),
        "crlfile": str(pki.ca_paths(settings.pki_dir)[2]),
        "plugin": str(plugin),
        "bridge_prefix": pki.BRIDGE_PREFIX,
        "service_prefix": pki.SERVICE_PREFIX,
        "operator_user": pki.OPERATOR_CN,
        "probe_user": pki.PROBE_CN,
        "telemetry_prefix": prefix,
        "telemetry_suffix": suffix,
        "revoked_file": str(pki.revoked_names_path(settings.pki_dir)),
    }


def build_plugin(target: Path, source: Path = PLUGIN_SOURCE) -> Path:
    """Compile the broker's plugin when the .so is missing or older than its source."""
    if target.exists() and target.stat().st_mtime >= source.stat().st_mtime:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    cmd = ["cc", "-shared", "-fPIC", "-O2", "-std=c99", "-Wall", "-Wextra", "-Werror",
           "-o", str(tmp), str(source)]
    result = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise StackError(f"could not build {source.name} ({' '.join(cmd)}): "
                         f"{result.stderr.strip()[-1500:]}")
    os.replace(tmp, target)
    log.info("built the broker plugin %s", target)
    return target


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


def open_telemetry_gate(settings: StackSettings, timeout_s: float = 10.0) -> None:
    """Let device telemetry in on a broker no bridge has subscribed to since it started (a test's
    or a benchmark's own broker): subscribe once as a bridge identity with a group of its own and
    leave with a clean start. Groups are independent, so this takes nothing from any bridge."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    name = f"{pki.BRIDGE_PREFIX}gate"
    identity = pki.service_identity(settings.pki_dir, name)
    done = threading.Event()
    codes: list[int] = []

    def on_subscribe(client: mqtt.Client, userdata: object, mid: int,
                     reasons: list[ReasonCode], properties: Properties) -> None:
        codes.extend(r.value for r in reasons)
        done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.tls_set(ca_certs=str(identity.ca), certfile=str(identity.cert),
                   keyfile=str(identity.key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.on_subscribe = on_subscribe
    group = f"gate-{uuid.uuid4().hex[:8]}"
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(
        f"$share/{group}/{topics.MQTT_TELEMETRY_FILTER}", qos=1)
    try:
        client.connect("localhost", settings.mqtt_port, keepalive=10, clean_start=True)
        client.loop_start()
        if not done.wait(timeout_s) or not codes or codes[0] >= 0x80:
            raise StackError(f"could not open the broker's telemetry gate: SUBACK {codes!r}")
    finally:
        client.disconnect()
        client.loop_stop()


def reload(settings: StackSettings) -> bool:
    """SIGHUP our broker: it re-reads the CRL and disconnects every identity listed in
    pki.revoked_names_path (after a revocation or a CRL renewal); False if it is not running."""
    service = MosquittoService(settings)
    pid = process.read_pid(service.processes()[0])
    if pid is None:
        return False
    os.kill(pid, signal.SIGHUP)
    log.info("sent SIGHUP to mosquitto (pid %d) to reload the CRL", pid)
    return True

