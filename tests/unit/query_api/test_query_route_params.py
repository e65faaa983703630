"""The /query route reads its parameters itself: the same answers FastAPI's resolver gave, every
bad value a 400 JSON naming the parameter, the last value of a repeated parameter winning."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from query_api.main import create_app
from tests.unit.query_api.test_query_api_app import SETTINGS, FakeRepository, Keys, token


@pytest.fixture
def client() -> Iterator[tuple[TestClient, FakeRepository]]:
    repo = FakeRepository()
    with TestClient(create_app(SETTINGS, repository=repo, jwks_fetcher=Keys().fetch)) as test_client:
        yield test_client, repo


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("limit=ten", "limit"),
        ("limit=%205", "limit"),
        ("limit=5%0A", "limit"),
        ("limit=1e3", "limit"),
        ("limit=-1", "limit"),
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=" + "9" * 50, "limit"),
        ("from=" + "1" * 65, "from"),
        ("tz=" + "A" * 65, "tz"),
        ("cursor=" + "a" * 201, "cursor"),
        ("metric=" + "m" * 201, "metric"),
        ("metric=a%20b", "metric"),
        ("limit=5&limit=x", "limit"),
    ],
)
def test_bad_values_are_a_400_naming_the_parameter(
    client: tuple[TestClient, FakeRepository], query: str, named: str
) -> None:
    response = client[0].get(f"/query/dev-a/1m?{query}", headers={"Authorization": f"Bearer {token()}"})
    assert response.status_code == 400, response.text
    assert response.json()["detail"].startswith(named)


def test_the_last_value_wins_and_unknown_parameters_are_ignored(
    client: tuple[TestClient, FakeRepository],
) -> None:
    test_client, repo = client
    response = test_client.get(
        "/query/dev-a/1m?limit=x&limit=7&junk=1&metric=temperature",
        headers={"Authorization": f"Bearer {token()}"},
    )
    assert response.status_code == 200, response.text
    assert repo.calls[-1][3:5] == ("temperature", 7)


@pytest.mark.parametrize("header", [None, "Basic abc", "Bearer", "Bearer   ", "bearer"])
def test_no_bearer_token_is_a_401_missing_token(
    client: tuple[TestClient, FakeRepository], header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = client[0].get("/query/dev-a/1m", headers=headers)
    assert response.status_code == 401
    assert response.json()["reason"] == "missing_token"
    assert response.headers["www-authenticate"] == 'Bearer realm="iot"'


def test_a_lowercase_scheme_is_a_bearer_token(client: tuple[TestClient, FakeRepository]) -> None:
    response = client[0].get("/query/dev-a/1m", headers={"Authorization": f"bearer {token()}"})
    assert response.status_code == 200
