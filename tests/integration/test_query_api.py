"""The query API against the real Keycloak (realm iot) and Cassandra, the API as a subprocess.

Tokens come from Keycloak itself: password grants of client1/client2/admin1, a client with a
3-second token lifespan for the expired case, the master realm's admin-cli for the foreign realm,
ID and refresh tokens of query-service, access tokens of other clients of the realm.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import jwt
import pytest
import schemathesis
from cassandra.cluster import Session
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.result import Ok

from gateway import endpoints
from harness.query_api import (
    SHORT_LIVED_CLIENT,
    accepting_env,
    admin_password,
    insert_windows,
    ms,
    password_token,
    register,
    running_api,
    short_lived_client,
    token_response,
)
from stack.config import StackSettings
from tests.integration.cassandra_harness import migrated_cql

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="module")
def cql(services: Services) -> Iterator[Session]:
    with migrated_cql(services, {"keycloak"}) as session:
        yield session


@pytest.fixture(scope="module")
def api(cql: Session, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    # The registry table must exist before the API prepares its lookup.
    register(cql, "qa-warmup", "tenant-a")
    log_file = tmp_path_factory.mktemp("query-api") / "query-api.log"
    with running_api(log_file, accepting_env(SHORT_LIVED_CLIENT)) as running:
        yield running.base


@pytest.fixture(scope="module")
def tokens(api: str) -> dict[str, str]:
    return {user: password_token(user) for user in ("client1", "client2", "admin1")}


@pytest.fixture(scope="module")
def devices(cql: Session) -> dict[str, str]:
    """Fresh device ids per run, so tests never see another run's rows."""
    run = uuid.uuid4().hex[:10]
    ids = {"a": f"qa-a-{run}", "b": f"qa-b-{run}"}
    register(cql, ids["a"], "tenant-a")
    register(cql, ids["b"], "tenant-b")
    return ids


def get(base: str, path: str, token: str | None = None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{base}{path}", headers=headers, params=params, timeout=10)


def assert_401(response: httpx.Response, reason: str | None = None) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if reason is not None:
        assert response.json()["reason"] == reason


# --- 401 -------------------------------------------------------------------------------------


def test_no_token(api: str, devices: dict[str, str]) -> None:
    assert_401(get(api, f"/query/{devices['a']}/1m"), "missing_token")


def test_tampered_signature(api: str, tokens: dict[str, str], devices: dict[str, str]) -> None:
    head, body, signature = tokens["client1"].split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=="))
    raw[10] ^= 0xFF
    forged = ".".join([head, body, base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")])
    assert_401(get(api, f"/query/{devices['a']}/1m", forged), "bad_signature")


def test_claims_re_signed_with_a_foreign_key(
    api: str, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    real = tokens["client1"]
    claims = jwt.decode(real, options={"verify_signature": False})
    kid = jwt.get_unverified_header(real)["kid"]
    foreign = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, foreign, algorithm="RS256", headers={"kid": kid})
    assert_401(get(api, f"/query/{devices['a']}/1m", forged), "bad_signature")


def test_expired_token(api: str, devices: dict[str, str]) -> None:
    with short_lived_client(lifespan_s=3) as client_id:
        token = password_token("client1", client_id=client_id)
        # Valid while fresh (so the refusal below is about expiry, nothing else)...
        fresh = get(api, f"/query/{devices['a']}/1m", token)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] <= 3
    assert fresh.status_code == 200, fresh.text
    # ...and refused once Keycloak's own expiry has passed.
    time.sleep(max(0.0, claims["exp"] - time.time()) + 1.2)
    assert_401(get(api, f"/query/{devices['a']}/1m", token), "expired")


def test_token_of_the_master_realm(api: str, devices: dict[str, str]) -> None:
    token = password_token("admin", admin_password(), realm="master", client_id="admin-cli")
    assert_401(get(api, f"/query/{devices['a']}/1m", token))


def test_id_token_of_query_service(api: str, devices: dict[str, str]) -> None:
    # Same signing key, issuer and audience as an access token: only `typ` tells them apart.
    grant = token_response("client1", scope="openid")
    assert grant.status_code == 200, grant.text
    id_token = grant.json()["id_token"]
    claims = jwt.decode(id_token, options={"verify_signature": False})
    assert claims["typ"] == "ID" and claims["aud"] == endpoints.KEYCLOAK_CLIENT_ID
    assert_401(get(api, f"/query/{devices['a']}/1m", id_token), "wrong_token_type")
    assert_401(get(api, f"/query/{devices['a']}/1m", grant.json()["refresh_token"]))
    assert get(api, f"/query/{devices['a']}/1m", grant.json()["access_token"]).status_code == 200


def test_access_token_of_another_client_of_the_realm(api: str, devices: dict[str, str]) -> None:
    # Every realm has admin-cli, a public client with password grants and no audience of ours.
    token = password_token("client1", client_id="admin-cli")
    assert jwt.decode(token, options={"verify_signature": False})["azp"] == "admin-cli"
    assert_401(get(api, f"/query/{devices['a']}/1m", token))


def test_another_client_given_our_audience_is_still_refused(api: str, devices: dict[str, str]) -> None:
    with short_lived_client(lifespan_s=300, client_id=f"qa-aud-{uuid.uuid4().hex[:6]}") as client_id:
        token = password_token("client1", client_id=client_id)
    claims = jwt.decode(token, options={"verify_signature": False})
    assert endpoints.KEYCLOAK_CLIENT_ID in claims["aud"] and claims["azp"] == client_id
    assert_401(get(api, f"/query/{devices['a']}/1m", token), "wrong_client")


# --- 404 / tenancy ---------------------------------------------------------------------------


def test_other_tenants_device_is_indistinguishable_from_an_unknown_one(
    api: str, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    other = get(api, f"/query/{devices['b']}/1m", tokens["client1"])
    unknown_id = f"qa-none-{uuid.uuid4().hex[:10]}"
    unknown = get(api, f"/query/{unknown_id}/1m", tokens["client1"])
    assert other.status_code == unknown.status_code == 404
    assert other.json() == {"detail": f"device {devices['b']} not found"}
    assert unknown.json() == {"detail": f"device {unknown_id} not found"}
    assert get(api, f"/query/{devices['a']}/1m", tokens["client2"]).status_code == 404


def test_each_tenant_and_the_admin_read_what_they_may(
    api: str, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    assert get(api, f"/query/{devices['a']}/1m", tokens["client1"]).status_code == 200
    assert get(api, f"/query/{devices['b']}/1h", tokens["client2"]).status_code == 200
    for device in devices.values():
        assert get(api, f"/query/{device}/all", tokens["admin1"]).status_code == 200


# --- 400 -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/query/bad%20id!/1m", {}),
        ("/query/" + "x" * 65 + "/1m", {}),
        ("/query/{a}/2d", {}),
        ("/query/{a}/1m", {"from": "yesterday"}),
        ("/query/{a}/1m", {"to": "2026-02-30T00:00:00Z"}),
        ("/query/{a}/1m", {"from": "2026-11-24T10:00:00"}),
        ("/query/{a}/1m", {"from": "1764003600000", "to": "1764000000000"}),
        ("/query/{a}/1m", {"limit": "0"}),
        ("/query/{a}/1m", {"limit": "100000"}),
        ("/query/{a}/1m", {"metric": "no spaces"}),
        ("/query/{a}/1m", {"cursor": "garbage!"}),
        ("/query/{a}%0A/1m", {}),
        ("/query/{a}/1m", {"metric": "temp\n"}),
        ("/query/{a}/1m", {"from": "1764000000000\n"}),
    ],
)
def test_bad_input_is_a_4xx_with_a_json_body(
    api: str,
    tokens: dict[str, str],
    devices: dict[str, str],
    path: str,
    params: dict[str, str],
) -> None:
    response = get(api, path.format(a=devices["a"]), tokens["client1"], **params)
    assert response.status_code in (400, 422), response.text
    assert "detail" in response.json()


def test_a_device_id_with_a_trailing_newline_is_a_400_json(
    api: str, cql: Session, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    cursor = base64.urlsafe_b64encode(b"1|temp").decode().rstrip("=")
    for path, params in [
        ("/query/dev1%0A/1m", {}),
        (f"/query/{devices['a']}%0A/all", {}),
        (f"/query/{devices['a']}/1m", {"cursor": cursor + "\n"}),
    ]:
        response = get(api, path, tokens["client1"], **params)
        assert response.status_code == 400, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"]


# --- bounded caches --------------------------------------------------------------------------


def cache_gauges(base: str) -> dict[str, float]:
    """query_api_cache_entries / _bytes of each cache, as /metrics shows them."""
    found = {}
    for line in httpx.get(f"{base}/metrics").text.splitlines():
        if line.startswith(("query_api_cache_entries{", "query_api_cache_bytes{")):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def test_junk_parameters_do_not_grow_the_caches(
    api: str, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    path = f"/query/{devices['a']}/1h"
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z"}
    assert get(api, path, tokens["client1"], **params).status_code == 200
    before = cache_gauges(api)
    assert before['query_api_cache_entries{cache="answers"}'] >= 1
    for n in range(200):
        junk = {f"junk{n}": "x" * 200, "utm_source": str(n)}
        assert get(api, path, tokens["client1"], **params, **junk).status_code == 200
    assert cache_gauges(api) == before


def test_the_caches_hold_at_most_their_byte_budget(
    cql: Session, tokens: dict[str, str], devices: dict[str, str], tmp_path: Any
) -> None:
    budget = 20_000
    env = {"IOT_RESULT_CACHE_BUDGET_BYTES": str(budget)}
    with running_api(tmp_path / "query-api.log", env) as running:
        for limit in range(1, 120):
            response = get(running.base, f"/query/{devices['a']}/1m", tokens["client1"], limit=str(limit))
            assert response.status_code == 200
        gauges = cache_gauges(running.base)
    for cache in ("answers", "reads"):
        assert 0 < gauges[f'query_api_cache_bytes{{cache="{cache}"}}'] <= budget
        assert 0 < gauges[f'query_api_cache_entries{{cache="{cache}"}}'] < 119


# --- data ------------------------------------------------------------------------------------


def test_1m_across_a_month_boundary(
    api: str, cql: Session, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    starts = [ms("2026-10-31T23:57:00Z") + i * 60_000 for i in range(6)]
    expected = insert_windows(cql, "agg_1m", devices["a"], starts, 60_000, ["temp", "hum"])
    response = get(
        api,
        f"/query/{devices['a']}/1m",
        tokens["client1"],
        **{"from": "2026-10-31T23:58:00Z", "to": str(ms("2026-11-01T00:02:00Z"))},
    )
    assert response.status_code == 200
    body = response.json()
    assert body == {"deviceId": devices["a"], "window": "1m", "items": expected[2:10], "next": None}
    # Paging: 3 at a time, nothing lost or repeated, across the partition boundary.
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params = {"from": "2026-10-31T23:57:00Z", "to": "2026-11-01T00:03:00Z", "limit": "3"}
        page = get(
            api,
            f"/query/{devices['a']}/1m",
            tokens["client1"],
            **params,
            **({"cursor": cursor} if cursor else {}),
        ).json()
        seen += page["items"]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == expected
    only = get(
        api,
        f"/query/{devices['a']}/1m",
        tokens["client1"],
        metric="temp",
        **{"from": "2026-10-31T23:57:00Z", "to": "2026-11-01T00:03:00Z"},
    ).json()
    assert only["items"] == [item for item in expected if item["metric"] == "temp"]


def test_1m_defaults_to_the_last_hour(
    api: str, cql: Session, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    device = f"{devices['a']}-now"
    register(cql, device, "tenant-a")
    minute = int(time.time() * 1000) // 60_000 * 60_000
    starts = [minute - 90 * 60_000, minute - 30 * 60_000, minute - 5 * 60_000]
    expected = insert_windows(cql, "agg_1m", device, starts, 60_000, ["temp"])
    body = get(api, f"/query/{device}/1m", tokens["client1"]).json()
    assert body["items"] == expected[1:]


def test_1h_across_a_year_boundary(
    api: str, cql: Session, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    starts = [ms("2025-12-31T22:00:00Z") + i * 3_600_000 for i in range(4)]
    expected = insert_windows(cql, "agg_1h", devices["b"], starts, 3_600_000, ["temp"])
    body = get(
        api,
        f"/query/{devices['b']}/1h",
        tokens["client2"],
        **{"from": "2025-12-31T23:00:00+00:00", "to": "2026-01-01T02:00:00Z"},
    ).json()
    assert body["items"] == expected[1:4]


def test_all_time_rollup(api: str, cql: Session, tokens: dict[str, str], devices: dict[str, str]) -> None:
    device = f"{devices['b']}-all"
    register(cql, device, "tenant-b")
    insert = cql.prepare(
        "INSERT INTO iot.agg_all (device_id, metric, count, sum, min, max, avg, first_ts, last_ts,"
        " late) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    first, last = ms("2026-11-20T08:00:00.123Z"), ms("2026-11-24T10:59:59Z")
    cql.execute(insert, (device, "temp", 100, 2150.0, 20.1, 22.9, 21.5, first, last, 3))
    cql.execute(insert, (device, "hum", 100, 4000.0, 30.0, 50.0, 40.0, first, last, 0))
    body = get(api, f"/query/{device}/all", tokens["client2"]).json()
    common = {
        "windowStart": None,
        "windowEnd": None,
        "firstTs": "2026-11-20T08:00:00.123Z",
        "lastTs": "2026-11-24T10:59:59Z",
    }
    assert body == {
        "deviceId": device,
        "window": "all",
        "next": None,
        "items": [
            {
                **common,
                "metric": "hum",
                "count": 100,
                "sum": 4000.0,
                "min": 30.0,
                "max": 50.0,
                "avg": 40.0,
                "late": 0,
            },
            {
                **common,
                "metric": "temp",
                "count": 100,
                "sum": 2150.0,
                "min": 20.1,
                "max": 22.9,
                "avg": 21.5,
                "late": 3,
            },
        ],
    }


# --- operations ------------------------------------------------------------------------------


def test_health_and_metrics(api: str) -> None:
    health = httpx.get(f"{api}/health")
    assert health.status_code == 200
    assert {d["status"] for d in health.json()["dependencies"].values()} == {"up"}
    text = httpx.get(f"{api}/metrics").text
    assert "query_api_request_duration_seconds_bucket" in text
    assert 'query_api_auth_failures_total{reason="missing_token"}' in text


def test_openapi_property_based_finds_no_5xx(
    api: str, tokens: dict[str, str], devices: dict[str, str]
) -> None:
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    headers = {"Authorization": f"Bearer {tokens['client1']}"}
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=100, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def run(case: Any) -> None:
            case.call_and_validate(base_url=api, headers=headers, checks=[not_a_server_error])

        run()
    # The run's requests all went through the API: prove it saw many and answered no 5xx.
    text = httpx.get(f"{api}/metrics").text
    assert 'status="5' not in text, json.dumps(text.splitlines()[-40:])
