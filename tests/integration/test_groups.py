"""Device groups and `iot groups` against the real Cassandra."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest

from gateway.groups import GroupError, GroupRegistry, MembershipCache, aggregate_key
from gateway.registry import DeviceRegistry, connect
from gateway.settings import CassandraConnection
from stack.config import StackSettings

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="module")
def registries(services: Services) -> Iterator[tuple[DeviceRegistry, GroupRegistry]]:
    """A keyspace of its own, dropped afterwards."""
    with services({"cassandra"}) as settings:
        session: Any = connect(CassandraConnection(cassandra_port=settings.cassandra_port))
        keyspace = f"iot_test_{uuid.uuid4().hex[:8]}"
        try:
            devices = DeviceRegistry(session, keyspace)
            yield devices, GroupRegistry(session, devices, keyspace)
        finally:
            session.execute(f"DROP KEYSPACE IF EXISTS {keyspace}", timeout=60)
            session.cluster.shutdown()


def test_groups_hold_only_their_tenants_devices(
    registries: tuple[DeviceRegistry, GroupRegistry],
) -> None:
    devices, groups = registries
    for device, tenant in (("g-a1", "tenant-a"), ("g-a2", "tenant-a"), ("g-b1", "tenant-b")):
        devices.register(device, tenant, "fp")
    groups.create("tenant-a", "floor-1")
    groups.create("tenant-a", "floor-2")
    groups.create("tenant-b", "floor-1")
    with pytest.raises(GroupError, match="exists already"):
        groups.create("tenant-a", "floor-1")
    # The name exists in two tenants: the command must say which.
    with pytest.raises(GroupError, match="pass --tenant"):
        groups.add("floor-1", ["g-a1"])
    assert groups.add("floor-1", ["g-a1", "g-a2"], tenant="tenant-a") == "tenant-a"
    assert groups.add("floor-2", ["g-a1"]) == "tenant-a"
    # Another tenant's device is refused like an unknown one.
    with pytest.raises(GroupError, match="no device 'g-b1'"):
        groups.add("floor-2", ["g-b1"])
    with pytest.raises(GroupError, match="no device 'missing'"):
        groups.add("floor-2", ["missing"])
    with pytest.raises(GroupError, match="invalid group name"):
        groups.create("tenant-a", "floor-1\n")

    assert groups.members("tenant-a", "floor-1") == ["g-a1", "g-a2"]
    assert [(g.name, g.devices) for g in groups.list("tenant-a")] == [("floor-1", 2), ("floor-2", 1)]
    memberships = groups.memberships()
    assert memberships["g-a1"] == (aggregate_key("tenant-a", "floor-1"), aggregate_key("tenant-a", "floor-2"))

    groups.remove("floor-1", ["g-a2"], tenant="tenant-a")
    assert groups.members("tenant-a", "floor-1") == ["g-a1"]
    assert "g-a2" not in groups.memberships()


def test_membership_cache_refreshes_and_survives_a_failed_read(
    registries: tuple[DeviceRegistry, GroupRegistry],
) -> None:
    devices, groups = registries
    devices.register("c-1", "tenant-a", "fp")
    groups.create("tenant-a", "cache-test")
    cache = MembershipCache(groups.memberships, refresh_s=10.0)
    assert cache.refresh_if_due(now=100.0)
    assert cache.groups_of("c-1") == ()
    groups.add("cache-test", ["c-1"])
    assert not cache.refresh_if_due(now=105.0)  # not due: the old answer stands
    assert cache.refresh_if_due(now=111.0)
    assert cache.groups_of("c-1") == (aggregate_key("tenant-a", "cache-test"),)
