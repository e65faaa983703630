"""Keycloak through the stack runner: the realm `iot` of CONTRACT.md and its access tokens."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import httpx
import pytest

from gateway import endpoints
from stack.config import StackSettings

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
    response = _password_grant(token_url, username, "temp")
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
    response = _password_grant(token_url, "client1", "not-the-password")
    assert response.status_code == 401
    assert "access_token" not in response.json()
