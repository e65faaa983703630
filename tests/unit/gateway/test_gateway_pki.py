"""gateway.pki: the CA, leaf certificates, revocation (no services)."""

from __future__ import annotations

import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway import pki


def _cn(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _signed_by_ca(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        return False
    return True


def test_ca_is_created_once_with_a_private_key(tmp_path: Path) -> None:
    crt = pki.ensure_ca(tmp_path)
    first = crt.read_bytes()
    assert pki.ensure_ca(tmp_path).read_bytes() == first
    ca_crt, ca_key, crl = pki.ca_paths(tmp_path)
    assert stat.S_IMODE(ca_key.stat().st_mode) == 0o600
    cert = pki.load_cert(ca_crt)
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)  # type: ignore[union-attr]
    assert crl.exists()


def test_server_certificate_names_localhost(tmp_path: Path) -> None:
    server = pki.server_identity(tmp_path)
    cert = pki.load_cert(server.cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert _signed_by_ca(cert, pki.load_cert(server.ca))


def test_device_certificate_cn_is_the_device_id(tmp_path: Path) -> None:
    identity = pki.issue_device(tmp_path, "sensor-0001")
    assert identity.cert == tmp_path / "devices" / "sensor-0001.crt"
    assert stat.S_IMODE(identity.key.stat().st_mode) == 0o600
    cert = pki.load_cert(identity.cert)
    assert _cn(cert) == "sensor-0001"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    assert _signed_by_ca(cert, pki.load_cert(identity.ca))
    assert len(pki.fingerprint(identity.cert)) == 64


def test_duplicate_issue_is_refused_unless_overwritten(tmp_path: Path) -> None:
    first = pki.issue_device(tmp_path, "dup-1")
    fp = pki.fingerprint(first.cert)
    with pytest.raises(pki.PkiError, match="already has a certificate"):
        pki.issue_device(tmp_path, "dup-1")
    assert pki.fingerprint(pki.issue_device(tmp_path, "dup-1", overwrite=True).cert) != fp


@pytest.mark.parametrize("bad", ["", "a/b", "a+b", "#", "x" * 65, "dev ice", "../etc"])
def test_invalid_device_ids_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(pki.PkiError, match="invalid device id"):
        pki.issue_device(tmp_path, bad)


@pytest.mark.parametrize("reserved", ["operator", "svc-bridge", "svc-bridge-1", "svc-probe",
                                      "svc-anything"])
def test_reserved_names_are_not_device_ids(tmp_path: Path, reserved: str) -> None:
    with pytest.raises(pki.PkiError, match="reserved"):
        pki.issue_device(tmp_path, reserved)


def test_service_and_operator_identities(tmp_path: Path) -> None:
    bridge = pki.service_identity(tmp_path, "svc-bridge")
    assert _cn(pki.load_cert(bridge.cert)) == "svc-bridge"
    assert pki.service_identity(tmp_path, "svc-bridge") == bridge
    assert _cn(pki.load_cert(pki.operator_identity(tmp_path).cert)) == "operator"
    assert _cn(pki.load_cert(pki.probe_identity(tmp_path).cert)) == pki.PROBE_CN
    with pytest.raises(pki.PkiError):
        pki.service_identity(tmp_path, "bridge")


def test_each_bridge_instance_has_its_own_identity(tmp_path: Path) -> None:
    one, two = pki.bridge_identity(tmp_path), pki.bridge_identity(tmp_path, 2)
    assert _cn(pki.load_cert(one.cert)) == pki.BRIDGE_CN == "svc-bridge-1"
    assert _cn(pki.load_cert(two.cert)) == "svc-bridge-2"
    assert pki.is_bridge_name("svc-bridge-2") and pki.is_bridge_name("svc-bridge-test-x")
    for name in ("svc-bridge", "svc-bridge-", "svc-probe", "operator", "dev-1"):
        assert not pki.is_bridge_name(name), name
    with pytest.raises(pki.PkiError):
        pki.bridge_cn(0)


def test_revoked_names_list_the_identities_to_disconnect(tmp_path: Path) -> None:
    """What the broker disconnects on reload: revoked current certificates, not re-issued ones."""
    gone = pki.issue_device(tmp_path, "gone")
    again = pki.issue_device(tmp_path, "again")
    pki.issue_device(tmp_path, "kept")
    assert not pki.revoked_names_path(tmp_path).exists() or pki.revoked_names(tmp_path) == []
    pki.revoke_certificate(tmp_path, gone.cert)
    pki.revoke_certificate(tmp_path, again.cert)
    assert pki.revoked_names_path(tmp_path).read_text() == "again\ngone\n"
    pki.issue_device(tmp_path, "again", overwrite=True)  # a new certificate, not revoked
    assert pki.revoked_names_path(tmp_path).read_text() == "gone\n"
    pki.revoke_certificate(tmp_path, pki.bridge_identity(tmp_path, 3).cert)
    assert pki.revoked_names(tmp_path) == ["gone", "svc-bridge-3"]
    pki.renew_crl(tmp_path)  # a renewal keeps the list
    assert pki.revoked_names_path(tmp_path).read_text() == "gone\nsvc-bridge-3\n"


def test_revocation_lands_in_the_crl(tmp_path: Path) -> None:
    keep = pki.issue_device(tmp_path, "keep")
    gone = pki.issue_device(tmp_path, "gone")
    serial = pki.revoke_certificate(tmp_path, gone.cert)
    assert pki.revoke_certificate(tmp_path, gone.cert) == serial  # idempotent
    crl = x509.load_pem_x509_crl(pki.ca_paths(tmp_path)[2].read_bytes())
    assert crl.is_signature_valid(pki.load_cert(pki.ca_paths(tmp_path)[0]).public_key())  # type: ignore[arg-type]
    revoked = {entry.serial_number for entry in crl}
    assert pki.load_cert(gone.cert).serial_number in revoked
    assert pki.load_cert(keep.cert).serial_number not in revoked
    assert pki.is_revoked(tmp_path, gone.cert) and not pki.is_revoked(tmp_path, keep.cert)


def test_another_pki_dir_is_another_ca(tmp_path: Path) -> None:
    ours = pki.issue_device(tmp_path / "ours", "d1")
    theirs = pki.issue_device(tmp_path / "theirs", "d1")
    assert not _signed_by_ca(pki.load_cert(theirs.cert), pki.load_cert(ours.ca))
