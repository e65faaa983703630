"""The rendered Mosquitto configuration and the access-rule plugin's build (no broker needed)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from gateway import pki, topics
from stack.config import StackSettings
from stack.services.mosquitto import PLUGIN_HEADERS, MosquittoService, build_plugin


def _directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition(" ")
            found.setdefault(key, []).append(value)
    return found


def test_one_tls_listener_with_client_certificates_and_a_crl(tmp_path: Path) -> None:
    service = MosquittoService(StackSettings(stack_dir=tmp_path, mqtt_port=18999))
    service.render()
    conf = _directives(service.conf_file)
    assert conf["listener"] == ["18999"]
    assert conf["allow_anonymous"] == ["false"]
    assert conf["require_certificate"] == ["true"]
    assert conf["use_identity_as_username"] == ["true"]
    assert conf["tls_version"] == ["tlsv1.2"]
    for key in ("cafile", "certfile", "keyfile", "crlfile"):
        assert Path(conf[key][0]).is_file(), key
    assert conf["persistence"] == ["true"]
    # Holds a 5-minute bridge outage at 50 devices x 1/s (15,000 messages) with room to spare.
    assert int(conf["max_queued_messages"][0]) >= 15_000 * 10
    assert conf["max_queued_bytes"] == ["0"]
    assert conf["sys_interval"] == ["1"]
    assert "$" not in service.conf_file.read_text().replace("$SYS", "")


def test_access_rules_are_the_plugin_never_acl_file(tmp_path: Path) -> None:
    """acl_file allows every SUBSCRIBE in Mosquitto 2.0; the plugin decides instead."""
    service = MosquittoService(StackSettings(stack_dir=tmp_path))
    (service.home).mkdir(parents=True)
    (service.home / "acl").write_text("pattern read #\n")  # an earlier version's file
    service.render()
    conf = _directives(service.conf_file)
    assert "acl_file" not in conf
    assert not (service.home / "acl").exists()
    assert conf["plugin"] == [str(service.plugin_file)]
    assert conf["use_username_as_clientid"] == ["true"]
    assert conf["plugin_opt_bridge_prefix"] == [pki.BRIDGE_PREFIX]
    assert conf["plugin_opt_operator"] == [pki.OPERATOR_CN]
    assert conf["plugin_opt_probe"] == [pki.PROBE_CN]
    prefix, suffix = conf["plugin_opt_telemetry_prefix"][0], conf["plugin_opt_telemetry_suffix"][0]
    assert prefix + "dev-1" + suffix == topics.telemetry_topic("dev-1")
    assert conf["plugin_opt_revoked_file"] == [str(pki.revoked_names_path(tmp_path / "pki"))]
    # The identities the broker's rules name exist.
    for name in (pki.BRIDGE_CN, pki.PROBE_CN):
        assert (tmp_path / "pki" / "services" / f"{name}.crt").is_file()


def test_the_bridge_subscription_is_one_the_plugin_lets_a_bridge_make() -> None:
    group, _, filter_ = topics.MQTT_BRIDGE_SUBSCRIPTION.removeprefix("$share/").partition("/")
    assert group and "/" not in group and filter_ == topics.MQTT_TELEMETRY_FILTER
    assert pki.is_bridge_name(pki.BRIDGE_CN) and pki.BRIDGE_CN.startswith(pki.SERVICE_PREFIX)


@pytest.mark.skipif(
    shutil.which("cc") is None or not all(Path(p).exists() for p in PLUGIN_HEADERS),
    reason="no C compiler or Mosquitto headers (iot up installs them)",
)
def test_plugin_builds_warning_free_and_exports_the_v5_entry_points(tmp_path: Path) -> None:
    target = build_plugin(tmp_path / "iot_edge.so")
    assert target.is_file()
    first = target.stat().st_mtime_ns
    assert build_plugin(target).stat().st_mtime_ns == first  # up to date: not rebuilt
    nm = shutil.which("nm")
    if nm:
        symbols = subprocess.run([nm, "-D", "--defined-only", str(target)], capture_output=True,
                                 text=True, check=True).stdout
        for name in ("mosquitto_plugin_version", "mosquitto_plugin_init",
                     "mosquitto_plugin_cleanup"):
            assert name in symbols
