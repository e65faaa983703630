"""The rendered Mosquitto configuration and ACL (no broker needed)."""

from __future__ import annotations

from pathlib import Path

from stack.config import StackSettings
from stack.services.mosquitto import MosquittoService


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
    for key in ("cafile", "certfile", "keyfile", "crlfile", "acl_file"):
        assert Path(conf[key][0]).is_file(), key
    assert conf["persistence"] == ["true"]
    # Holds a 5-minute bridge outage at 50 devices x 1/s (15,000 messages) with room to spare.
    assert int(conf["max_queued_messages"][0]) >= 15_000 * 10
    assert conf["max_queued_bytes"] == ["0"]
    assert conf["sys_interval"] == ["1"]
    assert "$" not in service.conf_file.read_text().replace("$SYS", "")


def test_acl_devices_write_only_their_own_topic(tmp_path: Path) -> None:
    service = MosquittoService(StackSettings(stack_dir=tmp_path))
    service.render()
    lines = [
        line for line in (service.home / "acl").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert lines[0] == "pattern write devices/%u/telemetry"
    assert not any(line.startswith("pattern read") or line.startswith("topic") for line in lines[:1])
    bridge = lines.index("user svc-bridge")
    operator = lines.index("user operator")
    assert "topic read devices/+/telemetry" in lines[bridge:operator]
    assert "topic read devices/#" in lines[operator:]
