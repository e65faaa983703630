"""The peer bridge for bench/bridge.py: mq-bridge (PyPI, Rust core) routing MQTT -> Kafka.

Installed into a venv of its own under the cache dir (it is not a project dependency), configured
for the same job as ours: MQTT 5 persistent session, QoS 1, shared subscription, acknowledge after
processing (`delayed_ack: false`), Kafka acks=all + idempotence + lz4 + linger 5 ms, window 2000.
It forwards the raw payload (no validation, no tenant lookup): less work than our bridge does.

flechtwerk, the other candidate, requires Python >= 3.12 (every release); this machine has 3.11
only, and installing it anyway (`--ignore-requires-python`) fails at import with a SyntaxError.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from gateway import pki
from stack.config import StackSettings

log = logging.getLogger(__name__)

PACKAGE = "mq-bridge==1.2.0"

# Runs inside the peer's venv: the route until SIGTERM.
_RUNNER = """
import json, signal, sys, threading
from mq_bridge import Route
route = Route.from_config(json.loads(sys.argv[1]))
done = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: done.set())
route.start()
print("peer route started", flush=True)
done.wait()
route.stop()
route.join()
"""


def peer_python(settings: StackSettings) -> Path:
    """The peer's interpreter, installing it on first use (PyPI through pip)."""
    venv = settings.cache_dir / "peers" / PACKAGE.replace("==", "-")
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", PACKAGE], check=True)
        (venv / ".installed").touch()
    return python


def route_config(settings: StackSettings, client_id: str, group: str, topic: str) -> dict[str, object]:
    identity = pki.service_identity(settings.pki_dir, client_id)
    return {
        "input": {
            "mqtt": {
                "url": f"mqtts://localhost:{settings.mqtt_port}",
                "topic": f"$share/{group}/devices/+/telemetry",
                "client_id": client_id,
                "clean_session": False,
                "session_expiry_interval": 600,
                "qos": 1,
                "protocol": "v5",
                "max_inflight": 2000,
                "queue_capacity": 2000,
                "delayed_ack": False,
                "tls": {
                    "required": True,
                    "ca_file": str(identity.ca),
                    "cert_file": str(identity.cert),
                    "key_file": str(identity.key),
                },
            }
        },
        "output": {
            "kafka": {
                "url": f"localhost:{settings.kafka_port}",
                "topic": topic,
                "create_topic": False,
                "delayed_ack": False,
                "producer_options": [
                    ["acks", "all"],
                    ["enable.idempotence", "true"],
                    ["compression.type", "lz4"],
                    ["linger.ms", "5"],
                ],
            }
        },
        "required_delivery": "at_least_once",
    }


class PeerProcess:
    def __init__(self, settings: StackSettings, config: dict[str, object], log_file: Path) -> None:
        self.python = peer_python(settings)
        self.config = config
        self.log_file = log_file
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_file, "ab") as out:
            self.proc = subprocess.Popen(
                [str(self.python), "-c", _RUNNER, json.dumps(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "RUST_LOG": "warn"},
            )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
