"""The stack's own exporter for Prometheus: what no service of the pipeline exposes itself.

- the PKI: the CA's and the broker's certificate notAfter, the CRL's nextUpdate (Mosquitto refuses
  every client once its CRL is past nextUpdate), read from .stack/pki at every scrape, so a
  renewal or a revocation shows at once;
- the filesystem holding the stack dir (Kafka logs, Cassandra data, the TSDB);
- Mosquitto's $SYS counters (messages in and out, dropped, clients, stored): Mosquitto has no
  /metrics, and neither Debian nor PyPI offer a kept-up exporter for it, so one subscription with
  the operator's certificate (the ACL lets it read $SYS/#) feeds these gauges and counters.

It runs beside Prometheus (stack/services/prometheus.py), as `python -m stack.exporter`, on
127.0.0.1 only (IOT_EXPORTER_HOST in containers). SIGTERM stops the HTTP server and the MQTT
session and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway import pki
from gateway.service_main import NOISY, run_main
from stack.config import StackSettings
from stack.services.prometheus import EXPORTER_IDENTITY, ObservabilitySettings

log = logging.getLogger("stack.exporter")

# $SYS topic -> (metric, kind, help). Counters are cumulative since the broker started.
SYS_TOPICS: dict[str, tuple[str, str, str]] = {
    "$SYS/broker/messages/received": (
        "mosquitto_messages_received", "counter", "MQTT packets of any kind received by Mosquitto"),
    "$SYS/broker/messages/sent": (
        "mosquitto_messages_sent", "counter", "MQTT packets of any kind sent by Mosquitto"),
    "$SYS/broker/publish/messages/received": (
        "mosquitto_publish_messages_received", "counter", "PUBLISH messages received by Mosquitto"),
    "$SYS/broker/publish/messages/sent": (
        "mosquitto_publish_messages_sent", "counter", "PUBLISH messages sent by Mosquitto"),
    "$SYS/broker/publish/messages/dropped": (
        "mosquitto_publish_messages_dropped", "counter",
        "PUBLISH messages Mosquitto dropped (queue limits, offline clients); must stay 0"),
    "$SYS/broker/bytes/received": ("mosquitto_received_bytes", "counter", "Bytes received"),
    "$SYS/broker/bytes/sent": ("mosquitto_sent_bytes", "counter", "Bytes sent"),
    "$SYS/broker/clients/connected": (
        "mosquitto_clients_connected", "gauge", "Clients connected now"),
    "$SYS/broker/store/messages/count": (
        "mosquitto_store_messages", "gauge", "Messages held by the broker (queued and retained)"),
    "$SYS/broker/subscriptions/count": (
        "mosquitto_subscriptions", "gauge", "Active subscriptions"),
    "$SYS/broker/uptime": ("mosquitto_uptime_seconds", "gauge", "Seconds since Mosquitto started"),
}


def _number(payload: bytes) -> float | None:
    """$SYS payloads are decimal text, the uptime with a ' seconds' suffix."""
    try:
        return float(payload.decode("ascii", "replace").split()[0])
    except (ValueError, IndexError):
        return None


class PkiCollector(Collector):
    """Expiry times of the CA, the broker's certificate and the CRL, read at scrape time."""

    def __init__(self, pki_dir: Path) -> None:
        self._pki_dir = pki_dir

    def collect(self) -> Iterator[Metric]:
        ca_cert, _, _ = pki.ca_paths(self._pki_dir)
        not_after = GaugeMetricFamily(
            "iot_pki_certificate_not_after_seconds",
            "Expiry (notAfter) of a certificate of the stack, Unix time in seconds",
            labels=["certificate"],
        )
        errors = GaugeMetricFamily(
            "iot_pki_read_errors", "1 while a PKI file cannot be read or parsed", labels=["file"]
        )
        for label, path in (("ca", ca_cert), ("server", self._pki_dir / "server.crt")):
            try:
                not_after.add_metric([label], pki.load_cert(path).not_valid_after_utc.timestamp())
                errors.add_metric([path.name], 0)
            except (OSError, ValueError, pki.PkiError) as exc:
                log.warning("cannot read certificate %s: %s", path, exc)
                errors.add_metric([path.name], 1)
        yield not_after
        next_update = GaugeMetricFamily(
            "iot_pki_crl_next_update_seconds",
            "nextUpdate of the CA's CRL, Unix time in seconds (past it Mosquitto refuses clients)",
        )
        try:
            _, when = pki.crl_dates(self._pki_dir)
            # A CRL without nextUpdate never expires for OpenSSL: report it far ahead.
            next_update.add_metric([], when.timestamp() if when else float("inf"))
            errors.add_metric(["ca.crl"], 0)
        except (OSError, ValueError, pki.PkiError) as exc:
            log.warning("cannot read the CRL in %s: %s", self._pki_dir, exc)
            errors.add_metric(["ca.crl"], 1)
        yield next_update
        yield errors


class DiskCollector(Collector):
    """Size and free space of the filesystem holding the stack dir."""

    def __init__(self, stack_dir: Path) -> None:
        self._stack_dir = stack_dir

    def collect(self) -> Iterator[Metric]:
        try:
            st = os.statvfs(self._stack_dir)
        except OSError as exc:
            log.warning("statvfs %s: %s", self._stack_dir, exc)
            return
        labels = ["path"]
        size = GaugeMetricFamily("iot_stack_filesystem_size_bytes",
                                 "Size of the filesystem holding the stack dir", labels=labels)
        avail = GaugeMetricFamily(
            "iot_stack_filesystem_avail_bytes",
            "Space left to unprivileged writers on the filesystem holding the stack dir",
            labels=labels,
        )
        size.add_metric([str(self._stack_dir)], st.f_blocks * st.f_frsize)
        avail.add_metric([str(self._stack_dir)], st.f_bavail * st.f_frsize)
        yield size
        yield avail


class MosquittoCollector(Collector):
    """The latest $SYS values, kept by the MQTT thread, turned into metrics at scrape time."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.connected = False
        self.last_message = 0.0

    def on_sys(self, topic: str, payload: bytes) -> None:
        value = _number(payload)
        if topic in SYS_TOPICS and value is not None:
            self.values[topic] = value
            self.last_message = time.time()

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "mosquitto_up", "1 while the exporter holds a session with Mosquitto's $SYS topics",
            value=1.0 if self.connected else 0.0,
        )
        values = dict(self.values)
        # Mosquitto publishes the dropped count only once it changes; it counts from 0.
        if self.connected:
            values.setdefault("$SYS/broker/publish/messages/dropped", 0.0)
        for topic, (name, kind, help_text) in SYS_TOPICS.items():
            if topic not in values:
                continue
            if kind == "counter":
                yield CounterMetricFamily(name, help_text, value=values[topic])
            else:
                yield GaugeMetricFamily(name, help_text, value=values[topic])


def _mqtt_client(  # type: ignore[no-untyped-def]
    settings: StackSettings, obs: ObservabilitySettings, collector: MosquittoCollector
):
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    identity = exporter_identity(settings.pki_dir)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stack-exporter-{os.getpid()}")
    client.tls_set(ca_certs=str(identity.ca), certfile=str(identity.cert),
                   keyfile=str(identity.key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    client.reconnect_delay_set(min_delay=1, max_delay=30)

    def on_connect(client: mqtt.Client, userdata: object, flags: object, reason: object,
                   properties: object) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("Mosquitto refused the exporter's session: %s", reason)
            return
        collector.connected = True
        client.subscribe([(topic, 0) for topic in SYS_TOPICS])
        log.info("subscribed to %d $SYS topics on %s:%d", len(SYS_TOPICS), obs.mqtt_host,
                 settings.mqtt_port)

    def on_disconnect(client: mqtt.Client, userdata: object, flags: object, reason: object,
                      properties: object) -> None:
        if collector.connected:
            log.warning("lost the $SYS session with Mosquitto (%s); reconnecting", reason)
        collector.connected = False

    def on_message(client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        collector.on_sys(message.topic, bytes(message.payload))

    client.on_connect = on_connect
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    return client


def exporter_identity(pki_dir: Path) -> pki.Identity:
    """The exporter's certificate files; made by the runner's install (or `--issue-identity`)."""
    stem = pki_dir / "services" / EXPORTER_IDENTITY
    return pki.Identity(stem.with_suffix(".crt"), stem.with_suffix(".key"), pki.ca_paths(pki_dir)[0])


def registry(settings: StackSettings, mosquitto: MosquittoCollector) -> CollectorRegistry:
    r = CollectorRegistry()
    r.register(PkiCollector(settings.pki_dir))
    r.register(DiskCollector(settings.stack_dir))
    r.register(mosquitto)
    return r


async def run(settings: StackSettings, obs: ObservabilitySettings) -> None:
    mosquitto = MosquittoCollector()
    server, thread = start_http_server(obs.exporter_port, addr=obs.exporter_host,
                                       registry=registry(settings, mosquitto))
    log.info("stack exporter on %s:%d (pki %s, disk %s)", obs.exporter_host, obs.exporter_port,
             settings.pki_dir, settings.stack_dir)
    client = _mqtt_client(settings, obs, mosquitto)
    # connect_async + loop_start: the first connection and every reconnect happen on paho's own
    # thread, so a broker that is down at start only delays the $SYS figures.
    client.connect_async(obs.mqtt_host, settings.mqtt_port, keepalive=30)
    client.loop_start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("stack exporter stopping")
        mosquitto.connected = False
        client.disconnect()
        client.loop_stop()
        await asyncio.to_thread(server.shutdown)
        server.server_close()
        thread.join(timeout=5)


def main(argv: list[str] | None = None) -> int:
    def arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--issue-identity", action="store_true",
                            help="create the exporter's MQTT certificate first if missing (containers)")

    return run_main("python -m stack.exporter", __doc__, _run, argv, arguments=arguments,
                    quiet=(*NOISY, "paho"))


def _run(args: argparse.Namespace) -> int:
    settings = StackSettings()
    if args.issue_identity:
        pki.service_identity(settings.pki_dir, EXPORTER_IDENTITY)
    asyncio.run(run(settings, ObservabilitySettings()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
