"""Device groups through the whole path: real MQTT devices, the bridge tags each reading with its
device's groups, the Flink job aggregates the group, and the query API serves it to its tenant
only. Compared with an oracle over the member devices' readings."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway import endpoints
from gateway.groups import GroupRegistry
from gateway.registry import DeviceRegistry
from gateway.registry import connect as registry_session
from gateway.settings import CassandraConnection
from harness.query_api import password_token
from stack.config import StackSettings
from tests.e2e import fault_harness as harness
from tests.oracle import OracleReading, close_enough, expected

pytestmark = pytest.mark.e2e

API = f"http://localhost:{endpoints.QUERY_API_PORT}"
# The bridge re-reads memberships this often (bridge_groups_refresh_s): wait it out before sending.
REFRESH_S = 10.0


@pytest.fixture(scope="module")
def stack(services: Any) -> Iterator[StackSettings]:
    with services(harness.SERVICES) as settings:
        yield settings


def _get(token: str, path: str, **params: Any) -> httpx.Response:
    return httpx.get(f"{API}{path}", params=params, headers={"Authorization": f"Bearer {token}"},
                     timeout=10)


def test_a_groups_windows_equal_the_oracle_over_its_members(stack: StackSettings) -> None:
    name = f"grp-{uuid.uuid4().hex[:6]}"
    client1 = password_token("client1")
    client2 = password_token("client2")
    with harness.fleet(stack, "groups", devices=4) as run:
        members = run.device_ids[:3]
        session = registry_session(CassandraConnection(cassandra_port=stack.cassandra_port))
        try:
            groups = GroupRegistry(session, DeviceRegistry(session))
            groups.create("tenant-a", name)
            groups.add(name, members)
        finally:
            session.cluster.shutdown()
        time.sleep(REFRESH_S + 2)
        harness.stream(run, seconds=30, rate=20.0, faults=[])
        wanted = [OracleReading(name, r.ts, r.metrics) for r in run.sent if r.device_id in members]
        minute, _, all_time = expected(wanted)
        (total,) = all_time.values()
        last_end = max(start for _, _, start in minute) + 60_000

        def complete() -> bool:
            body = _get(client1, f"/groups/{name}/all").json()
            items = body.get("items", [])
            return (time.time() * 1000 > last_end + (harness.WATERMARK_DELAY_S + 5) * 1000
                    and bool(items) and items[0]["count"] >= total.count)

        harness._tick_until(run, complete, 300, "the group's all-time row and last window")
        time.sleep(5)  # the writer's flush of the last window

        answer = _get(client1, f"/groups/{name}/all").json()
        assert answer["group"] == name
        (item,) = answer["items"]
        assert (item["count"], item["min"], item["max"]) == (total.count, total.min, total.max)
        assert close_enough(item["sum"], total.sum)

        first = min(start for _, _, start in minute)
        windows = _get(client1, f"/groups/{name}/1m", **{"from": first, "to": last_end}).json()["items"]
        got = {(w["metric"], w["windowStart"]): w for w in windows}
        assert len(got) == len(minute)
        for (_, metric, start), want in minute.items():
            iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start / 1000))
            window = got[(metric, iso)]
            assert (window["count"], window["min"], window["max"]) == (want.count, want.min, want.max)
            assert close_enough(window["sum"], want.sum)

    # Tenant isolation: another tenant's group answers as an unknown one, and is not listed.
    assert _get(client2, f"/groups/{name}/all").status_code == 404
    assert _get(client2, "/groups/no-such-group/all").status_code == 404
    assert name not in {g["group"] for g in _get(client2, "/groups").json()["items"]}
    listed = {g["group"]: g for g in _get(client1, "/groups").json()["items"]}
    assert listed[name]["devices"] == 3 and listed[name]["tenant"] == "tenant-a"
    # Bad names and windows are a 4xx with a JSON body, never a 5xx.
    for path in (f"/groups/{name}%0A/1m", "/groups/bad%20name/1m", f"/groups/{name}/7m"):
        response = _get(client1, path)
        assert 400 <= response.status_code < 500, (path, response.status_code)
        assert response.headers["content-type"].startswith("application/json")
