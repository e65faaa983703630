"""The project's PKI: a CA, the broker's server certificate, service, operator and device
certificates, and a CRL that Mosquitto enforces.

Layout under `pki_dir` (created on first use):

    ca.crt ca.key ca.crl revoked.json      the CA, its CRL and the revoked serials behind it
    revoked-names.txt                      identities whose current certificate is revoked; the
                                           broker disconnects them when it reloads
    server.crt server.key                  Mosquitto (SAN localhost, 127.0.0.1)
    operator.crt operator.key              debugging subscriber, CN `operator`
    services/NAME.crt services/NAME.key    e.g. bridge instance 1, CN `svc-bridge-1`
    devices/ID.crt devices/ID.key          one per device, CN = device id

Keys are EC P-256, written 0600. Several processes (the runner, the emulator, tests) may call in
at once, so every change happens under an exclusive lock on `pki_dir/.lock`.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.contract import is_valid_device_id

CA_NAME = "iot-pipeline CA"
OPERATOR_CN = "operator"
SERVICE_PREFIX = "svc-"
# Every bridge instance has its own identity, BRIDGE_PREFIX + N; the broker lets only these join
# the bridge's shared subscription. The MQTT client id is the identity (use_username_as_clientid).
BRIDGE_PREFIX = f"{SERVICE_PREFIX}bridge-"
BRIDGE_CN = f"{BRIDGE_PREFIX}1"
# Connects and does nothing else: the runner's readiness check (no session of anyone else's).
PROBE_CN = f"{SERVICE_PREFIX}probe"
CERT_DAYS = 825
CA_DAYS = 3650
# OpenSSL refuses every client while the CRL is past its nextUpdate, so it is re-signed well ahead
# (ensure_ca renews it when less than half of this is left).
CRL_DAYS = 30


class PkiError(RuntimeError):
    """The root error of the PKI: a bad name, a duplicate, a missing certificate."""


@dataclass(frozen=True)
class Identity:
    """Where one party's certificate, key and the CA certificate that verifies its peer live."""

    cert: Path
    key: Path
    ca: Path


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def is_reserved_name(name: str) -> bool:
    """Names the broker's ACL gives more rights than a device; never issued as a device id."""
    return name == OPERATOR_CN or name.startswith(SERVICE_PREFIX)


@contextmanager
def _locked(pki_dir: Path) -> Iterator[None]:
    pki_dir.mkdir(parents=True, exist_ok=True)
    with open(pki_dir / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_private(path: Path, data: bytes) -> None:
    """Write a file only its owner can read, never visible half-written or world-readable."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"no certificate at {path}") from exc


def fingerprint(cert_path: Path) -> str:
    """SHA-256 of the DER certificate, lower-case hex (`openssl x509 -fingerprint`, no colons)."""
    return load_cert(cert_path).fingerprint(hashes.SHA256()).hex()


def common_name(cert_path: Path) -> str:
    attrs = load_cert(cert_path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


# --- the CA ------------------------------------------------------------------------------------


def ca_paths(pki_dir: Path) -> tuple[Path, Path, Path]:
    """(ca.crt, ca.key, ca.crl)."""
    return pki_dir / "ca.crt", pki_dir / "ca.key", pki_dir / "ca.crl"


def _create_ca(pki_dir: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt, key_path, _ = ca_paths(pki_dir)
    write_private(key_path, _key_pem(key))
    _write_public(crt, _cert_pem(cert))


def _load_ca(pki_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    crt, key_path, _ = ca_paths(pki_dir)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC key")
    return load_cert(crt), key


def ensure_ca(pki_dir: Path) -> Path:
    """Create the CA and an empty CRL if missing, renew the CRL near nextUpdate; the CA path."""
    crt, key_path, crl = ca_paths(pki_dir)
    with _locked(pki_dir):
        if not crt.exists() or not key_path.exists():
            _create_ca(pki_dir)
        if not crl.exists() or _crl_expires_soon(crl):
            _write_crl(pki_dir)
    return crt


# --- leaf certificates ---------------------------------------------------------------------------


def _issue(
    pki_dir: Path, cn: str, cert_path: Path, key_path: Path, server: bool = False,
    extra_names: Sequence[str] = (),
) -> None:
    ca_cert, ca_key = _load_ca(pki_dir)
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    *(x509.DNSName(name) for name in extra_names),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(key_path, _key_pem(key))
    _write_public(cert_path, _cert_pem(cert))


def _ensure_leaf(pki_dir: Path, cn: str, stem: Path, server: bool = False) -> Identity:
    ca = ensure_ca(pki_dir)
    identity = Identity(stem.with_suffix(".crt"), stem.with_suffix(".key"), ca)
    with _locked(pki_dir):
        if not identity.cert.exists() or not identity.key.exists():
            _issue(pki_dir, cn, identity.cert, identity.key, server=server)
    return identity


def server_identity(pki_dir: Path, extra_names: Sequence[str] = ()) -> Identity:
    """Mosquitto's certificate (created if missing).

    `extra_names` are further DNS names clients may dial, e.g. `mosquitto` on a Compose network;
    an existing certificate that lacks one of them is re-issued (same CA, so clients keep working).
    """
    if not extra_names:
        return _ensure_leaf(pki_dir, "localhost", pki_dir / "server", server=True)
    ca = ensure_ca(pki_dir)
    stem = pki_dir / "server"
    identity = Identity(stem.with_suffix(".crt"), stem.with_suffix(".key"), ca)
    with _locked(pki_dir):
        if (
            not identity.cert.exists()
            or not identity.key.exists()
            or not set(extra_names) <= set(server_dns_names(identity.cert))
        ):
            _issue(pki_dir, "localhost", identity.cert, identity.key, server=True,
                   extra_names=extra_names)
    return identity


def server_dns_names(cert_path: Path) -> list[str]:
    """The DNS names in a certificate's subjectAltName (empty if it has none)."""
    try:
        san = load_cert(cert_path).extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.DNSName))


def operator_identity(pki_dir: Path) -> Identity:
    """The debugging subscriber allowed to read `devices/#` (created if missing)."""
    return _ensure_leaf(pki_dir, OPERATOR_CN, pki_dir / "operator")


def service_identity(pki_dir: Path, name: str = BRIDGE_CN) -> Identity:
    """A backend service's client certificate, e.g. bridge instance 1's `svc-bridge-1` (made if
    missing)."""
    if not name.startswith(SERVICE_PREFIX) or not is_valid_device_id(name):
        raise PkiError(f"service name {name!r} must start with {SERVICE_PREFIX!r}")
    return _ensure_leaf(pki_dir, name, pki_dir / "services" / name)


def bridge_cn(instance: int) -> str:
    """The identity (certificate CN and MQTT client id) of bridge instance N (1, 2, ...)."""
    if instance < 1:
        raise PkiError(f"bridge instance {instance} must be 1 or more")
    return f"{BRIDGE_PREFIX}{instance}"


def bridge_identity(pki_dir: Path, instance: int = 1) -> Identity:
    """Bridge instance N's certificate (made if missing)."""
    return service_identity(pki_dir, bridge_cn(instance))


def is_bridge_name(name: str) -> bool:
    return name.startswith(BRIDGE_PREFIX) and len(name) > len(BRIDGE_PREFIX)


def probe_identity(pki_dir: Path) -> Identity:
    """A certificate the broker grants nothing: for readiness checks (made if missing)."""
    return service_identity(pki_dir, PROBE_CN)


def cert_path_for(pki_dir: Path, name: str) -> Path:
    """Where the current certificate of an identity (device, service or operator) lives."""
    if name == OPERATOR_CN:
        return pki_dir / "operator.crt"
    if name.startswith(SERVICE_PREFIX):
        return pki_dir / "services" / f"{name}.crt"
    return device_paths(pki_dir, name).cert


def device_paths(pki_dir: Path, device_id: str) -> Identity:
    """Where a device's certificate lives; nothing is created."""
    stem = pki_dir / "devices" / device_id
    return Identity(stem.with_suffix(".crt"), stem.with_suffix(".key"), pki_dir / "ca.crt")


def check_device_id(device_id: str) -> None:
    if not is_valid_device_id(device_id):
        raise PkiError(f"invalid device id {device_id!r}: must match ^[A-Za-z0-9_-]{{1,64}}$")
    if is_reserved_name(device_id):
        raise PkiError(f"device id {device_id!r} is reserved for the operator or a service")


def issue_device(pki_dir: Path, device_id: str, overwrite: bool = False) -> Identity:
    """A new certificate with CN = device id; PkiError if one exists (unless overwrite)."""
    check_device_id(device_id)
    ensure_ca(pki_dir)
    identity = device_paths(pki_dir, device_id)
    with _locked(pki_dir):
        if identity.cert.exists() and not overwrite:
            raise PkiError(f"device {device_id!r} already has a certificate at {identity.cert}")
        _issue(pki_dir, device_id, identity.cert, identity.key)
        if overwrite:
            # A re-issued device is no longer revoked: the broker must not disconnect it.
            _write_revoked_names(pki_dir)
    return identity


# --- revocation ----------------------------------------------------------------------------------


def _revoked_file(pki_dir: Path) -> Path:
    return pki_dir / "revoked.json"


def revoked_serials(pki_dir: Path) -> dict[str, dict[str, str]]:
    """serial (hex) -> {"cn", "revoked_at"}."""
    path = _revoked_file(pki_dir)
    if not path.exists():
        return {}
    data: dict[str, dict[str, str]] = json.loads(path.read_text())
    return data


def revoked_names_path(pki_dir: Path) -> Path:
    """One identity a line: those whose current certificate is revoked (the broker's kick list)."""
    return pki_dir / "revoked-names.txt"


def revoked_names(pki_dir: Path) -> list[str]:
    """Identities whose current certificate is revoked or gone; a re-issued one is not listed."""
    revoked = revoked_serials(pki_dir)
    names: set[str] = set()
    for info in revoked.values():
        name = info.get("cn", "")
        if not is_valid_device_id(name):
            continue  # never hand the broker a line it could misread
        try:
            current = format(load_cert(cert_path_for(pki_dir, name)).serial_number, "x")
        except PkiError:
            current = None
        if current is None or current in revoked:
            names.add(name)
    return sorted(names)


def _write_revoked_names(pki_dir: Path) -> None:
    text = "".join(f"{name}\n" for name in revoked_names(pki_dir))
    _write_public(revoked_names_path(pki_dir), text.encode())


def _crl_expires_soon(crl_path: Path) -> bool:
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    next_update = crl.next_update_utc
    return next_update is None or next_update - _now() < dt.timedelta(days=CRL_DAYS / 2)


def _write_crl(pki_dir: Path) -> None:
    ca_cert, ca_key = _load_ca(pki_dir)
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        .next_update(now + dt.timedelta(days=CRL_DAYS))
    )
    for serial, info in revoked_serials(pki_dir).items():
        revoked = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial, 16))
            .revocation_date(dt.datetime.fromisoformat(info["revoked_at"]))
            .build()
        )
        builder = builder.add_revoked_certificate(revoked)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_public(ca_paths(pki_dir)[2], crl.public_bytes(serialization.Encoding.PEM))
    _write_revoked_names(pki_dir)


def crl_dates(pki_dir: Path) -> tuple[dt.datetime, dt.datetime | None]:
    """(thisUpdate, nextUpdate) of the CA's CRL, in UTC."""
    crl = x509.load_pem_x509_crl(ca_paths(pki_dir)[2].read_bytes())
    return crl.last_update_utc, crl.next_update_utc


def renew_crl(pki_dir: Path) -> None:
    """Re-sign the CRL with the same revoked serials and a fresh validity (the supervisor's timer;
    the broker re-reads it on reload)."""
    with _locked(pki_dir):
        _write_crl(pki_dir)


def revoke_certificate(pki_dir: Path, cert_path: Path) -> str:
    """Add the certificate's serial to the CRL and re-sign it; the serial (hex). Idempotent.

    The broker reads the CRL at start and on SIGHUP: the caller reloads it
    (stack.services.mosquitto.reload), which also disconnects the identity's open connection
    (it is listed in revoked-names.txt unless it was re-issued since)."""
    cert = load_cert(cert_path)
    serial = format(cert.serial_number, "x")
    ensure_ca(pki_dir)
    with _locked(pki_dir):
        entries = revoked_serials(pki_dir)
        if serial not in entries:
            attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            entries[serial] = {
                "cn": str(attrs[0].value) if attrs else "",
                "revoked_at": _now().isoformat(),
            }
            _write_public(_revoked_file(pki_dir), json.dumps(entries, indent=1).encode())
        _write_crl(pki_dir)
    return serial


def is_revoked(pki_dir: Path, cert_path: Path) -> bool:
    return format(load_cert(cert_path).serial_number, "x") in revoked_serials(pki_dir)
