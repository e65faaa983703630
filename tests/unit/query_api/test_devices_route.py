"""GET /devices with a fake registry and locally signed tokens: tenancy, paging, search, input."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from query_api.config import QueryApiSettings
from query_api.main import create_app
from query_api.params import PageQuery
from query_api.repository import Page
from query_api.routes.devices import DeviceRow, decode_cursor, encode_cursor

SETTINGS = QueryApiSettings(keycloak_url="http://keycloak.test", jwks_min_refresh_s=0.0, result_cache_s=0)
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(tenant: str | None = "tenant-a", roles: list[str] | None = None) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": "user-1",
        "iss": "http://keycloak.test/realms/iot",
        "aud": ["query-service"],
        "azp": "query-service",
        "typ": "Bearer",
        "iat": now,
        "exp": now + 300,
        "realm_access": {"roles": roles or []},
    }
    if tenant is not None:
        body["tenant"] = tenant
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1"})


async def _jwks() -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    return {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}


class NoAggregates:
    async def tenant_of(self, device_id: str) -> str | None:
        return None

    async def read(self, query: PageQuery) -> Page:
        return Page([], None)


class FakeDirectory:
    def __init__(self) -> None:
        self.rows = [DeviceRow(f"dev-{i:03d}", "tenant-a", 1_764_000_000_000 + i) for i in range(7)]
        self.rows.append(DeviceRow("other-1", "tenant-b", None))
        self.seen = {"dev-001": 1_764_000_123_000}

    async def listing(self, tenant: str | None) -> list[DeviceRow]:
        return sorted(
            (r for r in self.rows if tenant is None or r.tenant == tenant), key=lambda r: r.device_id
        )

    async def last_seen(self, device_ids: list[str]) -> dict[str, int]:
        return {d: self.seen[d] for d in device_ids if d in self.seen}


@pytest.fixture
def client() -> Iterator[TestClient]:
    app = create_app(SETTINGS, repository=NoAggregates(), jwks_fetcher=_jwks)
    app.state.device_directory = FakeDirectory()
    with TestClient(app) as test_client:
        yield test_client


def get(client: TestClient, bearer: str | None, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return client.get("/devices", headers=headers, params=params)


def test_a_tenant_sees_only_its_devices_with_created_and_last_seen(client: TestClient) -> None:
    response = get(client, token("tenant-a"))
    assert response.status_code == 200
    body = response.json()
    assert [i["deviceId"] for i in body["items"]] == [f"dev-{i:03d}" for i in range(7)]
    assert body["next"] is None
    first, second = body["items"][:2]
    assert first == {
        "deviceId": "dev-000",
        "tenant": "tenant-a",
        "createdAt": "2025-11-24T16:00:00Z",
        "lastSeen": None,
    }
    assert second["lastSeen"] == "2025-11-24T16:02:03Z"
    assert [i["deviceId"] for i in get(client, token("tenant-b")).json()["items"]] == ["other-1"]
    assert get(client, token("tenant-c")).json() == {"items": [], "next": None}


def test_an_admin_sees_every_tenant(client: TestClient) -> None:
    body = get(client, token("admin", roles=["iot-admin"]), limit=1000).json()
    assert {i["tenant"] for i in body["items"]} == {"tenant-a", "tenant-b"}


def test_pages_follow_the_cursor_without_overlap(client: TestClient) -> None:
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 3}
        if cursor:
            params["cursor"] = cursor
        body = get(client, token(), **params).json()
        seen += [i["deviceId"] for i in body["items"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert seen == [f"dev-{i:03d}" for i in range(7)]


def test_search_matches_part_of_the_id_in_any_case(client: TestClient) -> None:
    body = get(client, token(), q="V-00").json()
    assert len(body["items"]) == 7
    assert [i["deviceId"] for i in get(client, token(), q="006").json()["items"]] == ["dev-006"]


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"cursor": "!!!"}, 400),
        ({"cursor": encode_cursor("a b")}, 400),
        ({"limit": 0}, 422),
        ({"limit": 1001}, 422),
        ({"q": "a'; DROP TABLE devices"}, 422),
        ({"q": "x" * 65}, 422),
    ],
)
def test_bad_input_is_a_4xx_with_a_json_body(client: TestClient, params: dict[str, Any], status: int) -> None:
    response = get(client, token(), **params)
    assert response.status_code == status
    assert "detail" in response.json()


def test_no_token_is_401(client: TestClient) -> None:
    assert get(client, None).status_code == 401


def test_cursor_round_trip() -> None:
    assert decode_cursor(encode_cursor("dev-00042")) == "dev-00042"
