"""`iot certs init` and extra server names: what docker compose's pki-init runs (no services)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway import pki
from stack.commands.devices import certs_main


def test_server_certificate_carries_extra_names_and_is_reissued_when_one_is_missing(
    tmp_path: Path,
) -> None:
    plain = pki.server_identity(tmp_path)
    assert pki.server_dns_names(plain.cert) == ["localhost"]
    first = plain.cert.read_bytes()
    # The default call never touches an existing certificate (the native runner's path).
    assert pki.server_identity(tmp_path).cert.read_bytes() == first

    named = pki.server_identity(tmp_path, extra_names=["mosquitto"])
    assert named.cert == plain.cert
    assert pki.server_dns_names(named.cert) == ["localhost", "mosquitto"]
    second = named.cert.read_bytes()
    assert second != first
    # Already there: kept as is.
    assert pki.server_identity(tmp_path, extra_names=["mosquitto"]).cert.read_bytes() == second
    ca = pki.load_cert(pki.ca_paths(tmp_path)[0])
    pki.load_cert(named.cert).verify_directly_issued_by(ca)


def test_certs_init_creates_what_the_broker_and_the_bridge_need(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IOT_STACK_DIR", str(tmp_path))
    assert certs_main(["init", "--server-name", "mosquitto"]) == 0
    pki_dir = tmp_path / "pki"
    for name in ("ca.crt", "ca.key", "ca.crl", "server.crt", "server.key", "operator.crt",
                 "operator.key", f"services/{pki.BRIDGE_CN}.crt", f"services/{pki.BRIDGE_CN}.key"):
        assert (pki_dir / name).is_file(), name
    assert stat.S_IMODE((pki_dir / "server.key").stat().st_mode) == 0o600
    assert "mosquitto" in pki.server_dns_names(pki_dir / "server.crt")
    assert "DNS localhost, mosquitto" in capsys.readouterr().out
    # Idempotent: a second run changes nothing.
    before = {p: p.read_bytes() for p in pki_dir.rglob("*.crt")}
    assert certs_main(["init", "--server-name", "mosquitto"]) == 0
    assert {p: p.read_bytes() for p in pki_dir.rglob("*.crt")} == before
