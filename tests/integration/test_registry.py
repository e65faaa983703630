"""The device registry and `iot certs` / `iot devices` against the real Cassandra."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from gateway import pki
from gateway.registry import (
    DeviceRegistry,
    DuplicateDevice,
    TenantCache,
    UnknownDevice,
    connect,
    ensure_provisioned,
)
from gateway.settings import CassandraConnection
from stack.commands.devices import certs_main, devices_main
from stack.config import StackSettings

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="module")
def cassandra(services: Services) -> Iterator[tuple[StackSettings, Any]]:
    with services({"cassandra"}) as settings:
        session = connect(CassandraConnection(cassandra_port=settings.cassandra_port))
        try:
            yield settings, session
        finally:
            session.cluster.shutdown()


@pytest.fixture(scope="module")
def registry(cassandra: tuple[StackSettings, Any]) -> Iterator[DeviceRegistry]:
    """A keyspace of its own, dropped afterwards."""
    _, session = cassandra
    keyspace = f"iot_test_{uuid.uuid4().hex[:8]}"
    yield DeviceRegistry(session, keyspace)
    session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)


@pytest.fixture
def device_id() -> str:
    return f"reg-{uuid.uuid4().hex[:12]}"


def test_register_get_list_revoke(registry: DeviceRegistry, device_id: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    registry.register(device_id, tenant, "ab" * 32)
    device = registry.get(device_id)
    assert device is not None and device.tenant == tenant and device.revoked_at is None
    assert registry.get_tenant(device_id) == tenant
    assert registry.get_tenant("nobody-" + device_id) is None
    registry.register(device_id + "-2", tenant, "cd" * 32)
    assert [d.device_id for d in registry.list(tenant)] == [device_id, device_id + "-2"]
    with pytest.raises(DuplicateDevice):
        registry.register(device_id, "other", "ef" * 32)
    assert registry.get_tenant(device_id) == tenant
    assert registry.revoke(device_id).revoked_at is not None
    with pytest.raises(UnknownDevice):
        registry.revoke("nobody-" + device_id)


def test_tenant_cache_over_the_registry(registry: DeviceRegistry, device_id: str) -> None:
    cache = TenantCache(registry.get_tenant, negative_ttl_s=0)
    assert cache.get(device_id) is None
    registry.register(device_id, "tenant-a", "00" * 32)
    assert cache.get(device_id) == "tenant-a"


def test_cli_issue_list_revoke(cassandra: tuple[StackSettings, Any], device_id: str,
                               capsys: pytest.CaptureFixture[str]) -> None:
    settings, _ = cassandra
    assert certs_main(["issue", device_id, "--tenant", "tenant-b"]) == 0
    identity = pki.device_paths(settings.pki_dir, device_id)
    assert pki.common_name(identity.cert) == device_id and identity.key.exists()
    assert certs_main(["issue", device_id, "--tenant", "tenant-b"]) == 1
    assert "already registered" in capsys.readouterr().err
    assert devices_main(["list", "--tenant", "tenant-b"]) == 0
    assert device_id in capsys.readouterr().out
    assert certs_main(["revoke", device_id]) == 0
    assert pki.is_revoked(settings.pki_dir, identity.cert)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["issue", "bad/id", "--tenant", "tenant-a"], "invalid device id"),
        (["issue", "operator", "--tenant", "tenant-a"], "reserved"),
        (["issue", "fine-id", "--tenant", "Tenant A"], "invalid tenant"),
        (["revoke", "never-issued-device"], "no certificate"),
    ],
)
def test_cli_refuses_bad_input(cassandra: tuple[StackSettings, Any], argv: list[str],
                               message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert certs_main(argv) == 1
    assert message in capsys.readouterr().err


def test_ensure_provisioned_issues_and_backfills(registry: DeviceRegistry, tmp_path: Path,
                                                 device_id: str) -> None:
    pki.issue_device(tmp_path, device_id + "-old")  # a certificate the registry never saw
    ids = [device_id + "-old", device_id + "-new"]
    assert ensure_provisioned(tmp_path, registry, ids, "tenant-a") == 1
    assert [registry.get_tenant(i) for i in ids] == ["tenant-a", "tenant-a"]
    assert registry.get(ids[0]).cert_fingerprint == pki.fingerprint(  # type: ignore[union-attr]
        pki.device_paths(tmp_path, ids[0]).cert)
    assert ensure_provisioned(tmp_path, registry, ids, "tenant-a") == 0
    pki.device_paths(tmp_path, ids[1]).cert.unlink()
    with pytest.raises(DuplicateDevice, match="certificate is not in"):
        ensure_provisioned(tmp_path, registry, ids, "tenant-a")
