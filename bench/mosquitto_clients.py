"""Command lines of Mosquitto's own C clients, the baselines and load generators of the benches."""

from __future__ import annotations

import shutil

from gateway import pki, topics
from stack.config import StackSettings


def tls_args(identity: pki.Identity) -> list[str]:
    return ["--cafile", str(identity.ca), "--cert", str(identity.cert), "--key", str(identity.key)]


def pub_lines_argv(settings: StackSettings, device_id: str, identity: pki.Identity) -> list[str]:
    """`mosquitto_pub -l -q 1` as the device: one QoS-1 message per stdin line, to its topic."""
    return [
        shutil.which("mosquitto_pub") or "mosquitto_pub",
        "-h", "localhost", "-p", str(settings.mqtt_port), "-q", "1", "-l",
        *tls_args(identity),
        "-i", device_id, "-t", topics.telemetry_topic(device_id),
    ]  # fmt: skip
