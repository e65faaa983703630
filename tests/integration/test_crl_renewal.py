"""The supervisor's CRL timer against a real Mosquitto (Debian's 2.0): a CRL past its nextUpdate
makes the broker refuse every TLS client; renewal plus the reload (SIGHUP re-reads the crlfile)
lets them in again, and a CRL renewed before it expires keeps them connecting past its old
nextUpdate.

The broker is one of this test's own, on a free port with its own PKI, started the way the
runner starts the stack's (its pid file, its command line): the stack's broker and its CRL are
never touched.
"""

from __future__ import annotations

import datetime as dt
import getpass
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from paho.mqtt.enums import CallbackAPIVersion

from gateway import pki
from stack import process
from stack.config import StackSettings
from stack.services.mosquitto import MosquittoService
from stack.services.mosquitto import reload as reload_broker
from stack.supervision import SupervisorSettings
from stack.supervisor import Supervisor

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _write_crl(pki_dir: Path, next_update: dt.datetime) -> None:
    """A CRL signed by the CA, valid for 30 days, ending at next_update."""
    ca_key = serialization.load_pem_private_key(pki.ca_paths(pki_dir)[1].read_bytes(), None)
    ca = pki.load_cert(pki.ca_paths(pki_dir)[0])
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca.subject)
           .last_update(next_update - dt.timedelta(days=30)).next_update(next_update)
           .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
    pki.ca_paths(pki_dir)[2].write_bytes(crl.public_bytes(serialization.Encoding.PEM))


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[tuple[StackSettings, pki.Identity]]:
    settings = StackSettings(stack_dir=tmp_path, mqtt_port=_free_port())
    pki.ensure_ca(settings.pki_dir)
    server = pki.server_identity(settings.pki_dir)
    device = pki.issue_device(settings.pki_dir, "crl-device")
    service = MosquittoService(settings)
    service.home.mkdir(parents=True, exist_ok=True)
    # Only what the CRL check needs: one TLS listener requiring a client certificate.
    service.conf_file.write_text(
        f"user {getpass.getuser()}\nlog_dest stdout\nallow_anonymous false\n"
        f"listener {settings.mqtt_port} 127.0.0.1\ncafile {server.ca}\ncertfile {server.cert}\n"
        f"keyfile {server.key}\ncrlfile {pki.ca_paths(settings.pki_dir)[2]}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    _write_crl(settings.pki_dir, dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
    spec = service.processes()[0]
    process.start(spec)
    try:
        deadline = time.monotonic() + 10
        while not process.listening(settings.mqtt_port):
            assert time.monotonic() < deadline, process.log_tail(spec.log_file)
            time.sleep(0.1)
        yield settings, device
    finally:
        process.stop(spec)


def _connects(settings: StackSettings, identity: pki.Identity) -> bool:
    """A TLS handshake and a CONNACK accepting the device."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="crl-device")
    client.tls_set(ca_certs=str(identity.ca), certfile=str(identity.cert),
                   keyfile=str(identity.key), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    try:
        client.connect("127.0.0.1", settings.mqtt_port, keepalive=10)
        deadline = time.monotonic() + 5
        while not client.is_connected() and time.monotonic() < deadline:
            if client.loop(0.2) != mqtt.MQTT_ERR_SUCCESS:
                return False
        return client.is_connected()
    except (OSError, ssl.SSLError):
        return False
    finally:
        client.disconnect()


def test_renewal_and_reload_keep_tls_clients_connecting(
    broker: tuple[StackSettings, pki.Identity],
) -> None:
    settings, device = broker
    supervisor = Supervisor(settings, SupervisorSettings(), [])
    # Past its nextUpdate: OpenSSL refuses every client certificate.
    assert not _connects(settings, device)
    assert supervisor.check_crl()
    assert _connects(settings, device)

    # Due (less than half its validity left) but still valid: renewed ahead, the old nextUpdate
    # passes, clients keep connecting.
    old_next_update = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=4)
    _write_crl(settings.pki_dir, old_next_update)
    assert reload_broker(settings)
    assert _connects(settings, device)
    assert supervisor.check_crl()
    time.sleep(max(0.0, (old_next_update - dt.datetime.now(dt.UTC)).total_seconds()) + 1)
    assert _connects(settings, device)
    _, next_update = pki.crl_dates(settings.pki_dir)
    assert next_update is not None and next_update - dt.datetime.now(dt.UTC) > dt.timedelta(days=29)
    assert supervisor.state.crl.renewed_at is not None
