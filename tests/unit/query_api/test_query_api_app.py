"""The app with a fake repository and locally signed tokens (no services): auth, tenancy, input.

Only the unit tier signs its own tokens; tests/integration/test_query_api.py uses real Keycloak.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient

from query_api.config import QueryApiSettings
from query_api.main import create_app
from query_api.params import Cursor, PageQuery
from query_api.repository import Page

SETTINGS = QueryApiSettings(keycloak_url="http://keycloak.test", jwks_min_refresh_s=0.0)
ISSUER = "http://keycloak.test/realms/iot"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FOREIGN_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def token(
    key: rsa.RSAPrivateKey = KEY,
    kid: str = "k1",
    tenant: str | None = "tenant-a",
    roles: list[str] | None = None,
    **claims: Any,
) -> str:
    now = int(time.time())
    body: dict[str, Any] = {
        "sub": "user-1",
        "iss": ISSUER,
        "aud": ["query-service", "account"],
        "iat": now,
        "exp": now + 300,
        "typ": "Bearer",
        "azp": "query-service",
        "realm_access": {"roles": roles or []},
    }
    if tenant is not None:
        body["tenant"] = tenant
    body.update(claims)
    body = {name: value for name, value in body.items() if value is not None}
    return jwt.encode(body, key, algorithm="RS256", headers={"kid": kid})


class FakeRepository:
    def __init__(self) -> None:
        self.tenants = {"dev-a": "tenant-a", "dev-b": "tenant-b"}
        self.calls: list[tuple[Any, ...]] = []

    async def tenant_of(self, device_id: str) -> str | None:
        return self.tenants.get(device_id)

    async def read(self, query: PageQuery) -> Page:
        if query.span is None:
            return Page([], None)
        self.calls.append((query.key, query.window, query.span, query.metric, query.limit, query.cursor))
        item = {
            "windowStart": "2026-11-24T10:00:00Z",
            "windowEnd": "2026-11-24T10:01:00Z",
            "metric": "temperature",
            "count": 60,
            "sum": 1290.0,
            "min": 20.1,
            "max": 22.9,
            "avg": 21.5,
        }
        return Page([item], Cursor(1, "temperature").encode() if query.limit == 1 else None)


class Keys:
    def __init__(self) -> None:
        self.jwks = {"keys": [_jwk(KEY, "k1")]}
        self.fetches = 0

    async def fetch(self) -> dict[str, Any]:
        self.fetches += 1
        return self.jwks


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def repo() -> FakeRepository:
    return FakeRepository()


@pytest.fixture
def client(keys: Keys, repo: FakeRepository) -> Iterator[TestClient]:
    app = create_app(SETTINGS, repository=repo, jwks_fetcher=keys.fetch)
    with TestClient(app) as test_client:
        yield test_client


def get(client: TestClient, path: str, bearer: str | None = None, **params: Any) -> Any:
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
    return client.get(path, headers=headers, params=params)


def test_own_device_answers_with_the_contract_shape(client: TestClient) -> None:
    response = get(client, "/query/dev-a/1m", token())
    assert response.status_code == 200
    body = response.json()
    assert body["deviceId"] == "dev-a" and body["window"] == "1m"
    assert body["items"][0]["windowStart"] == "2026-11-24T10:00:00Z"
    assert body["next"] is None


@pytest.mark.parametrize(
    ("bearer", "reason"),
    [
        (None, "missing_token"),
        ("not-a-jwt", "malformed_token"),
        (token(FOREIGN_KEY), "bad_signature"),
        (token(FOREIGN_KEY, kid="other"), "unknown_key"),
        (token(exp=int(time.time()) - 10), "expired"),
        (token(iss="http://keycloak.test/realms/master"), "wrong_issuer"),
        (token(aud="account"), "wrong_audience"),
        (token(tenant=None), "no_tenant"),
        # An ID token of our own client: same key, issuer and audience, not an access token.
        (token(typ="ID"), "wrong_token_type"),
        (token(typ="Refresh"), "wrong_token_type"),
        (token(typ=None), "missing_claim"),
        # Another client's access token, even one given our audience by a mapper.
        (token(azp="some-other-client"), "wrong_client"),
        (token(azp=["query-service"]), "wrong_client"),
        (token(azp=None), "missing_claim"),
    ],
)
def test_refused_tokens_get_401_with_a_challenge(client: TestClient, bearer: str | None, reason: str) -> None:
    response = get(client, "/query/dev-a/1m", bearer)
    assert response.status_code == 401
    assert response.json()["reason"] == reason
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="iot"')
    metrics = client.get("/metrics").text
    assert f'query_api_auth_failures_total{{reason="{reason}"}} 1.0' in metrics


def test_the_web_consoles_access_tokens_are_accepted(client: TestClient) -> None:
    assert get(client, "/query/dev-a/1m", token(azp="iot-console")).status_code == 200


def test_hs256_with_the_public_key_is_refused(client: TestClient) -> None:
    forged = jwt.encode(
        {"sub": "x", "tenant": "tenant-a"}, "secret", algorithm="HS256", headers={"kid": "k1"}
    )
    assert get(client, "/query/dev-a/1m", forged).status_code == 401


def test_other_tenants_device_is_404_like_an_unknown_one(client: TestClient) -> None:
    other = get(client, "/query/dev-b/1m", token())
    unknown = get(client, "/query/nope/1m", token())
    assert other.status_code == unknown.status_code == 404
    assert other.json()["detail"].replace("dev-b", "X") == unknown.json()["detail"].replace("nope", "X")


def test_admin_reads_every_tenant(client: TestClient) -> None:
    admin = token(tenant=None, roles=["iot-admin"])
    assert get(client, "/query/dev-b/1h", admin).status_code == 200


def test_unknown_kid_refetches_the_key_set_once(client: TestClient, keys: Keys) -> None:
    before = keys.fetches
    keys.jwks = {"keys": [_jwk(KEY, "k1"), _jwk(FOREIGN_KEY, "k2")]}
    assert get(client, "/query/dev-a/1m", token(FOREIGN_KEY, kid="k2")).status_code == 200
    assert keys.fetches == before + 1
    # Validated once, then remembered: no further fetch, no per-request call.
    assert get(client, "/query/dev-a/1m", token(FOREIGN_KEY, kid="k2")).status_code == 200
    assert keys.fetches == before + 1


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/query/bad id!/1m", {}),
        ("/query/" + "x" * 65 + "/1m", {}),
        ("/query/dev-a/2m", {}),
        ("/query/dev-a/1m", {"from": "yesterday"}),
        ("/query/dev-a/1m", {"to": "2026-13-01T00:00:00Z"}),
        ("/query/dev-a/1m", {"from": "2026-11-24T10:00:00"}),  # no offset
        ("/query/dev-a/1m", {"from": "0001-01-01T00:00:00+14:00"}),
        ("/query/dev-a/1m", {"from": "99999999999999999999"}),
        ("/query/dev-a/1m", {"from": "-5"}),
        ("/query/dev-a/1m", {"from": "1764000000000", "to": "1763999999999"}),
        ("/query/dev-a/1m", {"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}),
        ("/query/dev-a/1m", {"limit": "0"}),
        ("/query/dev-a/1m", {"limit": "10001"}),
        ("/query/dev-a/1m", {"limit": "ten"}),
        ("/query/dev-a/1m", {"metric": "a b"}),
        ("/query/dev-a/1m", {"cursor": "%%%"}),
        ("/query/dev-a/all", {"cursor": "bm90IGEgY3Vyc29y"}),
    ],
)
def test_bad_input_is_4xx_json(client: TestClient, path: str, params: dict[str, str]) -> None:
    response = get(client, path, token(), **params)
    assert response.status_code in (400, 422), response.text
    assert "detail" in response.json()


def test_defaults_are_the_last_hour_and_the_last_week(client: TestClient, repo: FakeRepository) -> None:
    get(client, "/query/dev-a/1m", token())
    get(client, "/query/dev-a/1h", token())
    (_, _, minute, *_), (_, _, hour, *_) = repo.calls
    assert minute.end_ms - minute.start_ms == 3_600_000
    assert hour.end_ms - hour.start_ms == 7 * 86_400_000


def test_times_as_rfc3339_or_epoch_ms(client: TestClient, repo: FakeRepository) -> None:
    response = get(
        client, "/query/dev-a/1m", token(), **{"from": "2025-11-24T16:00:00+01:00", "to": "1764000000000"}
    )
    assert response.status_code == 200
    span = repo.calls[-1][2]
    assert (span.start_ms, span.end_ms) == (1763996400000, 1764000000000)


def test_next_cursor_is_returned_and_accepted(client: TestClient, repo: FakeRepository) -> None:
    first = get(client, "/query/dev-a/1m", token(), limit="1").json()
    assert first["next"]
    get(client, "/query/dev-a/1m", token(), limit="1", cursor=first["next"])
    assert repo.calls[-1][5] == Cursor(1, "temperature")


def test_health_metrics_and_docs_need_no_token(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Swagger UI's files come from npm at `make up`; the unit tier runs before that, so the page
    # is served from stand-ins here (tests/e2e checks the installed ones through the stack).
    from query_api.routes import docs

    monkeypatch.setattr(docs, "ASSETS_DIR", tmp_path)
    assert client.get("/docs").status_code == 503  # not installed: says so, no CDN fallback
    (tmp_path / "swagger-ui-bundle.js").write_text("// stand-in")
    health = client.get("/health")
    assert health.status_code == 200
    assert health.json()["dependencies"]["keycloak"]["status"] == "up"
    assert 'query_api_requests_total{method="GET",route="/health",status="200"}' in (
        client.get("/metrics").text
    )
    schema = client.get("/openapi.json").json()
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
    assert client.get("/docs").status_code == 200


def test_health_is_503_when_keycloak_is_down(repo: FakeRepository) -> None:
    async def down() -> dict[str, Any]:
        raise ConnectionError("refused")

    with TestClient(create_app(SETTINGS, repository=repo, jwks_fetcher=down)) as client:
        response = client.get("/health")
        assert response.status_code == 503
        assert response.json()["dependencies"]["keycloak"]["status"] == "down"
        # No keys at all: a token cannot be checked, which is the server's problem, not the caller's.
        assert get(client, "/query/dev-a/1m", token()).status_code == 503


# --- answers kept for repeated queries (hot_answers.py, result_cache.py) ---------------------


def _hot_hits(client: TestClient) -> int:
    return int(_hot(client).hits)


def test_a_repeated_query_is_answered_again_without_the_route(client: TestClient) -> None:
    # One token: two made a second apart differ in `iat`, and the second would be new.
    bearer = token()
    first = get(client, "/query/dev-a/1m", bearer)
    again = get(client, "/query/dev-a/1m", bearer)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert again.headers["content-type"] == "application/json"
    assert _hot_hits(client) == 1
    # Counted under its route template like any other answer.
    metrics = client.get("/metrics").text
    route = 'route="/query/{deviceId}/{window}"'
    assert f'query_api_requests_total{{method="GET",{route},status="200"}} 2.0' in metrics


@pytest.mark.parametrize(
    ("bearer", "status"),
    [
        (None, 401),
        (token(FOREIGN_KEY), 401),
        (token(exp=int(time.time()) - 10), 401),
        (token(tenant="tenant-b"), 404),
    ],
)
def test_a_kept_answer_goes_only_to_callers_the_route_would_answer(
    client: TestClient, bearer: str | None, status: int
) -> None:
    assert get(client, "/query/dev-a/1m", token()).status_code == 200
    response = get(client, "/query/dev-a/1m", bearer)
    assert response.status_code == status, response.text
    assert _hot_hits(client) == 0


def test_an_admin_gets_the_kept_answer_of_any_tenant(client: TestClient) -> None:
    assert get(client, "/query/dev-b/1m", token(tenant="tenant-b")).status_code == 200
    admin = token(tenant=None, roles=["iot-admin"])
    assert get(client, "/query/dev-b/1m", admin).status_code == 200
    # The admin's token is new to the validator: the route validates it first, then it is known.
    assert get(client, "/query/dev-b/1m", admin).status_code == 200
    assert _hot_hits(client) >= 1


def test_answers_are_read_again_after_the_cache_time(keys: Keys, repo: FakeRepository) -> None:
    settings = SETTINGS.model_copy(update={"result_cache_s": 0.05})
    with TestClient(create_app(settings, repository=repo, jwks_fetcher=keys.fetch)) as client:
        bearer = token()
        get(client, "/query/dev-a/1m", bearer)
        get(client, "/query/dev-a/1m", bearer)
        assert len(repo.calls) == 1
        time.sleep(0.12)
        get(client, "/query/dev-a/1m", bearer)
        assert len(repo.calls) == 2


def test_an_answer_larger_than_the_bound_is_not_kept(keys: Keys, repo: FakeRepository) -> None:
    settings = SETTINGS.model_copy(update={"result_cache_max_bytes": 100})
    with TestClient(create_app(settings, repository=repo, jwks_fetcher=keys.fetch)) as client:
        bearer = token()
        assert get(client, "/query/dev-a/1m", bearer).status_code == 200
        assert get(client, "/query/dev-a/1m", bearer).status_code == 200
        assert _hot_hits(client) == 0 and len(repo.calls) == 2


# --- a trailing newline is not a second spelling of a valid value -----------------------------


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/query/dev-a%0A/1m", {}),
        ("/query/dev-a%0A/all", {}),
        ("/query/dev-a/1m", {"metric": "temperature\n"}),
        ("/query/dev-a/1m", {"cursor": Cursor(1, "temperature").encode() + "\n"}),
        ("/query/dev-a/1m", {"cursor": Cursor(1, "temperature").encode() + "%"}),
        ("/query/dev-a/1m", {"from": "1764000000000\n"}),
        ("/query/dev-a/1m", {"to": "2026-11-24T10:00:00Z\n"}),
    ],
)
def test_a_trailing_newline_is_a_400_json(
    client: TestClient, repo: FakeRepository, path: str, params: dict[str, str]
) -> None:
    repo.tenants["dev-a\n"] = "tenant-a"  # a registry that would answer for it
    response = get(client, path, token(), **params)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()
    assert repo.calls == []


# --- bounded caches ----------------------------------------------------------------------------


def _hot(client: TestClient) -> Any:
    middleware = client.app.middleware_stack  # type: ignore[attr-defined]
    while not hasattr(middleware, "hits"):
        middleware = middleware.app
    return middleware


def _gauge(client: TestClient, name: str, cache: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(f'{name}{{cache="{cache}"}} '):
            return float(line.split()[-1])
    raise AssertionError(f"{name} of {cache} not in /metrics")


def test_junk_parameters_make_no_new_entries(client: TestClient, repo: FakeRepository) -> None:
    bearer = token()
    assert get(client, "/query/dev-a/1m", bearer, limit="5").status_code == 200
    for n in range(50):
        response = get(client, "/query/dev-a/1m", bearer, limit="5", **{f"junk{n}": "x" * 100})
        assert response.status_code == 200
    # Order of the known ones does not matter either; the last value of a repeated one counts.
    assert get(client, "/query/dev-a/1m?metric=m&limit=5", bearer).status_code == 200
    assert get(client, "/query/dev-a/1m?limit=5&metric=m", bearer).status_code == 200
    assert get(client, "/query/dev-a/1m?limit=7&metric=m&limit=5", bearer).status_code == 200
    assert _hot(client).kept.entries == 2
    assert _hot(client).hits == 52
    assert _gauge(client, "query_api_cache_entries", "answers") == 2
    assert _gauge(client, "query_api_cache_entries", "reads") == 2
    assert len(repo.calls) == 2


def test_caches_hold_at_most_their_byte_budget(keys: Keys, repo: FakeRepository) -> None:
    settings = SETTINGS.model_copy(update={"result_cache_budget_bytes": 4_000})
    with TestClient(create_app(settings, repository=repo, jwks_fetcher=keys.fetch)) as client:
        bearer = token()
        for limit in range(1, 60):
            assert get(client, "/query/dev-a/1m", bearer, limit=str(limit)).status_code == 200
        for cache in ("answers", "reads"):
            held = _gauge(client, "query_api_cache_bytes", cache)
            assert 0 < held <= 4_000
            assert 0 < _gauge(client, "query_api_cache_entries", cache) < 59
        assert _hot(client).kept.bytes == _gauge(client, "query_api_cache_bytes", "answers")
