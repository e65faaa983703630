"""stack/exporter.py's collectors on a real PKI in a temporary directory (no broker)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from gateway import pki
from stack.config import StackSettings
from stack.exporter import MosquittoCollector, registry


def _samples(reg: CollectorRegistry) -> dict[str, float]:
    values = {}
    for family in reg.collect():
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values


def test_pki_expiry_and_disk_are_read_at_scrape_time(tmp_path: Path) -> None:
    settings = StackSettings(stack_dir=tmp_path)
    pki.ensure_ca(settings.pki_dir)
    pki.server_identity(settings.pki_dir)
    reg = registry(settings, MosquittoCollector())
    values = _samples(reg)
    ca = pki.load_cert(pki.ca_paths(settings.pki_dir)[0]).not_valid_after_utc.timestamp()
    assert values["iot_pki_certificate_not_after_seconds{certificate=ca}"] == ca
    server = values["iot_pki_certificate_not_after_seconds{certificate=server}"]
    assert server > dt.datetime.now(dt.UTC).timestamp() + 300 * 86400
    _, next_update = pki.crl_dates(settings.pki_dir)
    assert next_update is not None
    assert values["iot_pki_crl_next_update_seconds"] == next_update.timestamp()
    assert values["iot_pki_read_errors{file=ca.crl}"] == 0
    size = values[f"iot_stack_filesystem_size_bytes{{path={tmp_path}}}"]
    avail = values[f"iot_stack_filesystem_avail_bytes{{path={tmp_path}}}"]
    assert 0 < avail <= size
    # A broken file is reported, not raised: the other figures stay available.
    (settings.pki_dir / "server.crt").write_text("not a certificate")
    values = _samples(reg)
    assert values["iot_pki_read_errors{file=server.crt}"] == 1
    assert "iot_pki_certificate_not_after_seconds{certificate=server}" not in values
    assert values["iot_pki_certificate_not_after_seconds{certificate=ca}"] == ca


def test_missing_pki_is_an_error_gauge(tmp_path: Path) -> None:
    values = _samples(registry(StackSettings(stack_dir=tmp_path), MosquittoCollector()))
    assert values["iot_pki_read_errors{file=ca.crt}"] == 1
    assert values["iot_pki_read_errors{file=ca.crl}"] == 1


def test_mosquitto_sys_values_become_counters_and_gauges(tmp_path: Path) -> None:
    collector = MosquittoCollector()
    reg = CollectorRegistry()
    reg.register(collector)
    assert _samples(reg) == {"mosquitto_up": 0.0}
    collector.connected = True
    collector.on_sys("$SYS/broker/publish/messages/received", b"1234")
    collector.on_sys("$SYS/broker/clients/connected", b"52")
    collector.on_sys("$SYS/broker/uptime", b"390 seconds")
    # Unknown topics and garbage are ignored, never raised on the MQTT thread.
    collector.on_sys("$SYS/broker/version", b"mosquitto version 2.0.11")
    collector.on_sys("$SYS/broker/clients/connected\x00", b"\xff")
    collector.on_sys("$SYS/broker/messages/sent", b"")
    values = _samples(reg)
    assert values["mosquitto_up"] == 1.0
    assert values["mosquitto_publish_messages_received_total"] == 1234
    assert values["mosquitto_clients_connected"] == 52
    assert values["mosquitto_uptime_seconds"] == 390
    # Published by Mosquitto only once it changes: 0 until then.
    assert values["mosquitto_publish_messages_dropped_total"] == 0
    assert "mosquitto_messages_sent_total" not in values
    text = generate_latest(reg).decode()
    assert "# HELP mosquitto_publish_messages_dropped_total" in text
    assert "# TYPE mosquitto_clients_connected gauge" in text
