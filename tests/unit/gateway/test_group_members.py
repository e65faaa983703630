"""A change of membership writes both tables, the group's members and the device's groups."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from gateway.groups import GroupError, GroupRegistry


class _Session:
    def __init__(self) -> None:
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def execute(self, cql: str, params: tuple[Any, ...] = (), timeout: float | None = None) -> list[Any]:
        self.statements.append((cql, params))
        if "FROM iot.device_groups WHERE name" in cql:
            return [SimpleNamespace(tenant="tenant-a")]
        return []


class _Devices:
    def get_tenant(self, device_id: str) -> str | None:
        return "tenant-b" if device_id.startswith("b-") else "tenant-a"


def _registry() -> tuple[GroupRegistry, _Session]:
    session = _Session()
    registry = GroupRegistry(session, _Devices(), "iot")  # type: ignore[arg-type]
    session.statements.clear()
    return registry, session


def test_add_and_remove_write_both_tables_per_device() -> None:
    registry, session = _registry()
    assert registry.add("g1", ["d1", "d2"]) == "tenant-a"
    writes = [(cql.split(" (")[0].split(" WHERE")[0], p) for cql, p in session.statements if "INSERT" in cql]
    assert writes == [
        ("INSERT INTO iot.group_members", ("tenant-a", "g1", "d1")),
        ("INSERT INTO iot.groups_of_device", ("d1", "tenant-a", "g1")),
        ("INSERT INTO iot.group_members", ("tenant-a", "g1", "d2")),
        ("INSERT INTO iot.groups_of_device", ("d2", "tenant-a", "g1")),
    ]
    session.statements.clear()
    assert registry.remove("g1", ["d1"]) == "tenant-a"
    deletes = [p for cql, p in session.statements if cql.startswith("DELETE")]
    assert deletes == [("tenant-a", "g1", "d1"), ("d1", "g1")]


def test_another_tenants_device_is_refused_before_any_write() -> None:
    registry, session = _registry()
    with pytest.raises(GroupError, match="no device 'b-1' in tenant 'tenant-a'"):
        registry.add("g1", ["d1", "b-1"])
    assert not [cql for cql, _ in session.statements if "INSERT" in cql]
