"""Keycloak's OpenID Connect endpoints for the console: authorization code with PKCE (S256).

The browser only ever carries the one-time code; the token exchange, refresh and sign-out are
back-channel calls from this process to Keycloak.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import secrets
import time
from typing import Any
from urllib.parse import urlencode

import httpx
import jwt

from console.config import ConsoleSettings
from console.errors import SignedOut, Upstream
from console.sessions import PendingLogin, Session

log = logging.getLogger(__name__)

ADMIN_ROLE = "iot-admin"
# Refresh a little before expiry, so a token never expires between our check and its use.
_EXPIRY_MARGIN_S = 20.0


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, code_challenge) of RFC 7636 with S256."""
    verifier = secrets.token_urlsafe(64)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def safe_next(path: str | None) -> str:
    """Only a local path may be returned to after sign-in (no open redirect)."""
    if not path or not path.startswith("/") or path.startswith(("//", "/auth/")) or "\\" in path:
        return "/devices"
    return path[:500]


class KeycloakClient:
    def __init__(self, settings: ConsoleSettings, http: httpx.AsyncClient) -> None:
        self._settings = settings
        self._http = http
        self._token_url = f"{settings.realm_url}/protocol/openid-connect/token"
        self._logout_url = f"{settings.realm_url}/protocol/openid-connect/logout"
        self._authorize_url = f"{settings.public_realm_url}/protocol/openid-connect/auth"

    def start_login(self, next_path: str | None) -> tuple[PendingLogin, str]:
        """A pending sign-in and the Keycloak URL to send the browser to."""
        verifier, challenge = pkce_pair()
        pending = PendingLogin(
            state=secrets.token_urlsafe(24),
            code_verifier=verifier,
            nonce=secrets.token_urlsafe(24),
            next_path=safe_next(next_path),
        )
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self._settings.console_client_id,
                "redirect_uri": self._settings.redirect_uri,
                "scope": "openid",
                "state": pending.state,
                "nonce": pending.nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return pending, f"{self._authorize_url}?{query}"

    def _client_auth(self) -> dict[str, str]:
        form = {"client_id": self._settings.console_client_id}
        if self._settings.console_client_secret is not None:
            form["client_secret"] = self._settings.console_client_secret.get_secret_value()
        return form

    async def _token_call(self, form: dict[str, str]) -> dict[str, Any]:
        try:
            response = await self._http.post(self._token_url, data={**form, **self._client_auth()})
        except httpx.HTTPError as exc:
            raise Upstream(f"Keycloak token endpoint: {exc.__class__.__name__}") from exc
        if response.status_code in (400, 401):
            # invalid_grant: a used or expired code, an ended session, a refresh token too old.
            error = _error_of(response)
            raise SignedOut(f"Keycloak refused: {error}")
        if response.status_code != 200:
            raise Upstream(f"Keycloak token endpoint: HTTP {response.status_code}")
        body: dict[str, Any] = response.json()
        return body

    async def finish_login(self, pending: PendingLogin, code: str) -> Session:
        tokens = await self._token_call(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": self._settings.redirect_uri,
                "code_verifier": pending.code_verifier,
            }
        )
        id_claims = _claims(tokens.get("id_token"))
        if id_claims.get("nonce") != pending.nonce:
            raise SignedOut("the ID token does not carry this sign-in's nonce")
        return _session(tokens)

    async def fresh(self, session: Session) -> Session:
        """The session with an access token valid for a while; refreshed in place if needed."""
        if session.access_expires_at - _EXPIRY_MARGIN_S > time.time():
            return session
        if not session.refresh_token:
            raise SignedOut("the session has expired")
        tokens = await self._token_call(
            {"grant_type": "refresh_token", "refresh_token": session.refresh_token}
        )
        renewed = _session(tokens)
        session.access_token = renewed.access_token
        session.refresh_token = renewed.refresh_token or session.refresh_token
        session.id_token = renewed.id_token or session.id_token
        session.access_expires_at = renewed.access_expires_at
        return session

    async def end_session(self, session: Session) -> None:
        """End the user's Keycloak session too (back channel: no token in a browser URL)."""
        if not session.refresh_token:
            return
        try:
            response = await self._http.post(
                self._logout_url, data={"refresh_token": session.refresh_token, **self._client_auth()}
            )
        except httpx.HTTPError as exc:
            log.warning("Keycloak sign-out of %s failed: %s", session.username, exc.__class__.__name__)
            return
        if response.status_code not in (200, 204):
            log.warning("Keycloak sign-out of %s: HTTP %d", session.username, response.status_code)


def _error_of(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    return str(body.get("error_description") or body.get("error") or response.status_code)[:200]


def _claims(token: object) -> dict[str, Any]:
    """Claims of a token received straight from Keycloak's token endpoint over the back channel.

    The query API verifies every access token's signature; the console only reads who signed in."""
    if not isinstance(token, str):
        return {}
    try:
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return {}
    return claims


def _session(tokens: dict[str, Any]) -> Session:
    access = tokens.get("access_token")
    if not isinstance(access, str):
        raise Upstream("Keycloak answered without an access token")
    claims = _claims(access)
    roles = (claims.get("realm_access") or {}).get("roles") or []
    tenant = claims.get("tenant")
    if isinstance(tenant, list):
        tenant = tenant[0] if len(tenant) == 1 else None
    expires_in = float(tokens.get("expires_in") or 60)
    return Session(
        access_token=access,
        refresh_token=tokens.get("refresh_token"),
        id_token=tokens.get("id_token"),
        access_expires_at=time.time() + expires_in,
        username=str(claims.get("preferred_username") or claims.get("sub") or "?"),
        tenant=tenant if isinstance(tenant, str) else None,
        is_admin=isinstance(roles, list) and ADMIN_ROLE in roles,
    )
