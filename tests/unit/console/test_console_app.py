"""The console app without services: what a browser that is not signed in gets, and headers."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from console.config import ConsoleSettings
from console.main import create_app

SETTINGS = ConsoleSettings(keycloak_url="http://keycloak.test", query_api_url="http://api.test")


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(SETTINGS), follow_redirects=False) as test_client:
        yield test_client


def test_sign_in_goes_to_keycloak_with_pkce_and_a_pending_cookie(client: TestClient) -> None:
    response = client.get("/login", params={"next": "/devices/dev-1"})
    assert response.status_code == 303
    url = urlsplit(response.headers["location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == (
        "http://keycloak.test/realms/iot/protocol/openid-connect/auth"
    )
    query = parse_qs(url.query)
    assert query["client_id"] == ["iot-console"]
    assert query["code_challenge_method"] == ["S256"]
    assert query["redirect_uri"] == ["http://localhost:8085/auth/callback"]
    assert len(query["code_challenge"][0]) == 43 and query["state"][0] and query["nonce"][0]
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    # The cookie names the pending sign-in only: nothing of it is in the URL.
    value = response.cookies["iot_console"]
    assert value not in response.headers["location"]


def test_a_callback_nobody_started_is_refused(client: TestClient) -> None:
    response = client.get("/auth/callback", params={"code": "x", "state": "y"})
    assert response.status_code == 401
    assert "sign in again" in response.text


def test_a_callback_with_another_state_is_refused(client: TestClient) -> None:
    client.get("/login")
    response = client.get("/auth/callback", params={"code": "x", "state": "forged"})
    assert response.status_code == 400


@pytest.mark.parametrize("path", ["/devices", "/devices/dev-1", "/ops/health", "/ops/dlq?reason=x"])
def test_pages_send_a_browser_without_a_session_to_sign_in(client: TestClient, path: str) -> None:
    response = client.get(path, cookies={"iot_console": "forged"})
    assert response.status_code == 303
    assert response.headers["location"].startswith("/login?next=%2F")


def test_the_api_answers_401_json_without_a_session(client: TestClient) -> None:
    response = client.get("/api/devices/dev-1/series")
    assert response.status_code == 401
    assert response.json()["signedOut"] is True


def test_bad_device_ids_never_reach_the_query_api(client: TestClient) -> None:
    assert client.get("/api/devices/a%20b/series").status_code in (400, 401)


def test_sign_out_without_a_session_lands_signed_out(client: TestClient) -> None:
    response = client.post("/logout", data={"csrf": "x"})
    assert response.status_code == 303 and response.headers["location"] == "/signed-out"


def test_pages_forbid_framing_and_foreign_scripts(client: TestClient) -> None:
    response = client.get("/signed-out")
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert 'href="/login"' in response.text


def test_health_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "up"
    client.get("/signed-out")
    text = client.get("/metrics").text
    assert 'console_requests_total{status="200",view="/signed-out"}' in text
    assert "console_sessions 0.0" in text


def test_a_malformed_device_id_gets_a_page_or_json_not_a_crash(client: TestClient) -> None:
    page = client.get("/devices/a%20b?cursor=" + "x" * 300)
    assert page.status_code in (303, 400)
    api = client.get("/api/devices/a%20b/series?range=forever")
    assert api.status_code in (400, 401) and "detail" in api.json()
