"""Bearer tokens of Keycloak realm `iot`, validated locally against the realm's cached JWKS.

Keycloak is called only to fetch the key set: at start-up and when a token names a key id we do
not know (a key rotation), at most once per `jwks_min_refresh_s`. Validated tokens are remembered
until they expire, so a client re-sending its token costs a dictionary lookup, not an RSA verify.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import jwt
from keycloak import KeycloakOpenID

from query_api.config import QueryApiSettings
from query_api.errors import AuthFailure, DependencyDown, Unauthorized

log = logging.getLogger(__name__)

ADMIN_ROLE = "iot-admin"
ALGORITHMS = ["RS256"]
# Keycloak's `typ` of access tokens; ID tokens say "ID", refresh tokens "Refresh".
ACCESS_TOKEN_TYPE = "Bearer"
_TOKEN_CACHE_MAX = 10_000

JwksFetcher = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's subject, tenant and whether it may read every tenant."""

    subject: str
    tenant: str | None
    is_admin: bool

    def may_read(self, tenant: str) -> bool:
        return self.is_admin or self.tenant == tenant


def keycloak_fetcher(settings: QueryApiSettings) -> JwksFetcher:
    client = KeycloakOpenID(
        server_url=settings.keycloak_url,
        realm_name=settings.keycloak_realm,
        client_id=settings.keycloak_client_id,
        timeout=settings.jwks_timeout_s,
    )

    async def fetch() -> dict[str, Any]:
        certs: dict[str, Any] = await client.a_certs()
        return certs

    return fetch


class JwksCache:
    """The realm's signing keys by key id; refetched on an unknown kid, rate-limited."""

    def __init__(self, fetch: JwksFetcher, min_refresh_s: float) -> None:
        self._fetch = fetch
        self._min_refresh_s = min_refresh_s
        self._keys: dict[str, jwt.PyJWK] = {}
        self._lock = asyncio.Lock()
        self._last_attempt = float("-inf")
        self.last_error: str | None = "not fetched yet"

    @property
    def key_count(self) -> int:
        return len(self._keys)

    async def refresh(self, force: bool = False) -> bool:
        """Fetch the key set unless one was fetched recently; True if a fetch succeeded."""
        async with self._lock:
            now = time.monotonic()
            if not force and now - self._last_attempt < self._min_refresh_s:
                return False
            self._last_attempt = now
            try:
                jwks = await self._fetch()
                keys = {
                    jwk["kid"]: jwt.PyJWK(jwk)
                    for jwk in jwks.get("keys", [])
                    if jwk.get("kid")
                    and jwk.get("use", "sig") == "sig"
                    and jwk.get("alg", "RS256") in ALGORITHMS
                }
            except Exception as exc:  # any failure of Keycloak or its answer: keep the old keys
                self.last_error = f"{exc.__class__.__name__}: {exc}"[:300]
                log.warning("JWKS fetch failed: %s", self.last_error)
                return False
            # /health refreshes too: say so only when the key set actually changed.
            changed = keys.keys() != self._keys.keys()
            self._keys = keys
            self.last_error = None
            log.log(
                logging.INFO if changed else logging.DEBUG,
                "JWKS fetched: %d signing keys %s",
                len(keys),
                sorted(keys),
            )
            return True

    async def key(self, kid: str) -> jwt.PyJWK | None:
        found = self._keys.get(kid)
        if found is None and await self.refresh():
            found = self._keys.get(kid)
        return found


class TokenValidator:
    def __init__(self, settings: QueryApiSettings, jwks: JwksCache) -> None:
        self._jwks = jwks
        self._issuer = settings.issuer
        self._audience = settings.keycloak_client_id
        self._clients = settings.accepted_clients
        # token -> (principal, exp); a hit is only as good as the expiry checked on every use.
        self._valid: dict[str, tuple[Principal, float]] = {}

    def known(self, token: str) -> Principal | None:
        """The principal of a token this validator accepted before and that has not expired."""
        cached = self._valid.get(token)
        return cached[0] if cached is not None and cached[1] > time.time() else None

    async def validate(self, token: str) -> Principal:
        cached = self._valid.get(token)
        if cached is not None:
            if cached[1] > time.time():
                return cached[0]
            del self._valid[token]
            raise Unauthorized(AuthFailure.EXPIRED, "token has expired")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(AuthFailure.MALFORMED, f"malformed token: {exc}") from exc
        if header.get("alg") not in ALGORITHMS:
            raise Unauthorized(AuthFailure.MALFORMED, f"algorithm {header.get('alg')!r} not allowed")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise Unauthorized(AuthFailure.MALFORMED, "token has no key id")
        key = await self._jwks.key(kid)
        if key is None:
            if self._jwks.key_count == 0:
                raise DependencyDown(f"no signing keys from Keycloak: {self._jwks.last_error}")
            raise Unauthorized(AuthFailure.UNKNOWN_KEY, "token signed by a key this realm does not have")
        claims = self._decode(token, key)
        self._check_issued_to_us(claims)
        principal = _principal(claims)
        if len(self._valid) >= _TOKEN_CACHE_MAX:
            self._valid.clear()
        self._valid[token] = (principal, float(claims["exp"]))
        return principal

    def _decode(self, token: str, key: jwt.PyJWK) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=ALGORITHMS,
                audience=self._audience,
                issuer=self._issuer,
                options={"require": ["exp", "iss", "aud", "sub", "typ", "azp"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized(AuthFailure.EXPIRED, "token has expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized(AuthFailure.BAD_SIGNATURE, "token signature does not verify") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized(AuthFailure.WRONG_ISSUER, "token is not from this realm") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized(AuthFailure.WRONG_AUDIENCE, "token is not for this API") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(AuthFailure.MISSING_CLAIM, str(exc)) from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthorized(AuthFailure.NOT_YET_VALID, str(exc)) from exc
        except jwt.PyJWTError as exc:
            raise Unauthorized(AuthFailure.MALFORMED, f"invalid token: {exc}") from exc
        return claims

    def _check_issued_to_us(self, claims: dict[str, Any]) -> None:
        """An access token (`typ` Bearer) that Keycloak issued to a client meant to call us.

        The signature, issuer and audience do not tell an ID token of our client (its `aud` is
        the client id too) or an access token of an arbitrary client carrying our audience
        (one audience mapper away) from an access token for this API: `typ` and `azp` do."""
        kind = claims["typ"]
        if kind != ACCESS_TOKEN_TYPE:
            raise Unauthorized(AuthFailure.WRONG_TOKEN_TYPE, f"not an access token (typ {str(kind)[:20]!r})")
        client = claims["azp"]
        # isinstance first: a list is no client, and unhashable.
        if not isinstance(client, str) or client not in self._clients:
            raise Unauthorized(
                AuthFailure.WRONG_CLIENT, f"token issued to client {str(client)[:64]!r}, not accepted here"
            )


def _principal(claims: dict[str, Any]) -> Principal:
    realm_access = claims.get("realm_access")
    roles = realm_access.get("roles") if isinstance(realm_access, dict) else None
    is_admin = isinstance(roles, list) and ADMIN_ROLE in roles
    tenant = claims.get("tenant")
    # A user attribute mapped as multivalued arrives as a list; one value is still one tenant.
    if isinstance(tenant, list) and len(tenant) == 1:
        tenant = tenant[0]
    if not isinstance(tenant, str) or not tenant:
        tenant = None
    if tenant is None and not is_admin:
        raise Unauthorized(AuthFailure.NO_TENANT, "token carries no tenant claim")
    return Principal(subject=str(claims["sub"]), tenant=tenant, is_admin=is_admin)
