"""Keycloak through the stack runner: the realm `iot` of docs/contract.md and its access tokens, the
administrator's generated password, brute-force detection."""

from __future__ import annotations

import base64
import json
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from gateway import endpoints
from harness.query_api import admin_headers, throwaway_user, user_password
from stack.config import StackSettings
from stack.services import keycloak_admin

pytestmark = pytest.mark.integration

Services = Callable[..., AbstractContextManager[StackSettings]]


@pytest.fixture(scope="session")
def token_url(services: Services) -> Iterator[str]:
    with services({"keycloak"}) as settings:
        base = f"http://{endpoints.HOST}:{settings.keycloak_port}"
        yield f"{base}/realms/{endpoints.KEYCLOAK_REALM}/protocol/openid-connect/token"


def _password_grant(token_url: str, username: str, password: str) -> httpx.Response:
    return httpx.post(
        token_url,
        data={
            "grant_type": "password",
            "client_id": endpoints.KEYCLOAK_CLIENT_ID,
            "username": username,
            "password": password,
        },
        timeout=10.0,
    )


def _claims(token_url: str, username: str) -> dict[str, Any]:
    """The payload of the user's access token (signature checks belong to the query API)."""
    response = _password_grant(token_url, username, user_password(username))
    assert response.status_code == 200, response.text
    payload = response.json()["access_token"].split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


@pytest.mark.parametrize(("username", "tenant"), [("client1", "tenant-a"), ("client2", "tenant-b")])
def test_password_grant_carries_the_tenant(token_url: str, username: str, tenant: str) -> None:
    claims = _claims(token_url, username)
    assert claims["tenant"] == tenant
    assert claims["preferred_username"] == username
    audience = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
    assert endpoints.KEYCLOAK_CLIENT_ID in audience
    assert claims["iss"].endswith(f"/realms/{endpoints.KEYCLOAK_REALM}")
    assert "iot-admin" not in claims.get("realm_access", {}).get("roles", [])


def test_admin_has_the_admin_role(token_url: str) -> None:
    claims = _claims(token_url, "admin1")
    assert "iot-admin" in claims["realm_access"]["roles"]


def test_wrong_password_is_refused(token_url: str) -> None:
    # A throwaway user: failed logins count towards a lockout (below), never on client1's.
    with throwaway_user("Right-password-1") as username:
        response = _password_grant(token_url, username, "not-the-password")
        assert response.status_code == 401
        assert "access_token" not in response.json()


def test_guessed_passwords_lock_the_account_for_a_while(token_url: str) -> None:
    realm = httpx.get(
        f"{endpoints.KEYCLOAK_URL}/admin/realms/{endpoints.KEYCLOAK_REALM}", headers=admin_headers()
    ).json()
    assert realm["bruteForceProtected"] is True and realm["permanentLockout"] is False
    right = "Right-password-1"
    with throwaway_user(right) as username:
        assert _password_grant(token_url, username, right).status_code == 200
        for attempt in range(realm["failureFactor"]):
            assert _password_grant(token_url, username, f"guess-{attempt}").status_code == 401
        refused = _password_grant(token_url, username, right)
        assert refused.status_code in (400, 401), refused.text
        assert "access_token" not in refused.json()
        users = f"{endpoints.KEYCLOAK_URL}/admin/realms/{endpoints.KEYCLOAK_REALM}/users"
        (user,) = httpx.get(
            users, params={"username": username, "exact": "true"}, headers=admin_headers()
        ).json()
        detection = f"{endpoints.KEYCLOAK_URL}/admin/realms/{endpoints.KEYCLOAK_REALM}/attack-detection"
        status = httpx.get(f"{detection}/brute-force/users/{user['id']}", headers=admin_headers()).json()
        # Guesses faster than quickLoginCheckMilliSeconds lock it before failureFactor is reached.
        assert status["disabled"] is True and status["numFailures"] >= 1
        # A while, not forever: the administrator (or the wait) lifts it.
        httpx.delete(
            f"{detection}/brute-force/users/{user['id']}", headers=admin_headers()
        ).raise_for_status()
        assert _password_grant(token_url, username, right).status_code == 200


def test_the_admin_console_password_is_generated_and_works(token_url: str) -> None:
    settings = StackSettings()
    password = keycloak_admin.shown_admin_password(settings)
    assert password is not None and password != keycloak_admin.LEGACY_ADMIN_PASSWORD
    if settings.keycloak_admin_password is None:
        kept = keycloak_admin.admin_password_file(settings)
        assert kept.read_text().strip() == password
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    master = token_url.replace(f"/realms/{endpoints.KEYCLOAK_REALM}/", "/realms/master/")

    def grant(secret: str) -> httpx.Response:
        data = {"grant_type": "password", "client_id": "admin-cli", "username": "admin", "password": secret}
        return httpx.post(master, data=data, timeout=10.0)

    assert grant(password).status_code == 200
    assert grant(keycloak_admin.LEGACY_ADMIN_PASSWORD).status_code == 401
