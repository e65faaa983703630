"""Keycloak 26 (Quarkus distribution) with the realm `iot` imported on first start.

The server zip comes from Maven Central (stack/maven/keycloak.pom.xml), built once into the shared
cache (stack/services/keycloak_dist.py); each clone runs it from its own home under
.stack/keycloak/home with `start --optimized` (~8 s of CPU once the database exists).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import httpx

from gateway import endpoints
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import Service, http_ready
from stack.services.keycloak_dist import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    REALM_FILE,
    ensure_server,
    link_home,
    realm_digest,
    seed_database,
    server_argv,
    server_env,
)

__all__ = ["REALM_FILE", "KeycloakService"]

log = logging.getLogger(__name__)


class KeycloakService(Service):
    name = "keycloak"
    stage = 0

    @property
    def state_dir(self) -> Path:
        return self.settings.service_dir(self.name)

    @property
    def kc_home(self) -> Path:
        return self.state_dir / "home"

    @property
    def base_url(self) -> str:
        return f"http://{endpoints.HOST}:{self.settings.keycloak_port}"

    def install(self) -> None:
        server = ensure_server(self.settings)
        link_home(self.kc_home, server)
        if seed_database(self.settings, server, self.kc_home):
            # The seeded database holds the current realm file's import.
            self._imported_marker.write_text(realm_digest() + "\n")

    def own_ports(self) -> tuple[int, ...]:
        return (self.settings.keycloak_port,)

    def processes(self) -> list[ProcessSpec]:
        home = self.kc_home
        argv = server_argv(self.settings, home, self.settings.keycloak_port)
        env = server_env(self.settings)
        return [self.spec("keycloak", argv, cwd=home, env=env, marker=f"-Dkc.home.dir={home}")]

    @property
    def _imported_marker(self) -> Path:
        return self.state_dir / "realm-imported.sha256"

    def initialise(self) -> None:
        """Replace the stored realm when iot-realm.json changed since it was imported.

        --import-realm skips an existing realm, so without this an edited realm file would need
        `iot down --purge`. Replacing drops the realm's sessions and keys: only on a change.
        """
        digest = realm_digest()
        try:
            imported = self._imported_marker.read_text().strip()
        except OSError:
            imported = digest  # just imported by this start (or a state older than the marker)
        if imported != digest:
            log.info("keycloak: %s changed since its import; replacing the realm", REALM_FILE.name)
            self._replace_realm()
        self._imported_marker.write_text(digest + "\n")

    def _replace_realm(self) -> None:
        admin = f"{self.base_url}/admin/realms"
        realm = f"{admin}/{endpoints.KEYCLOAK_REALM}"
        try:
            with httpx.Client(timeout=60.0) as client:
                grant = client.post(
                    f"{self.base_url}/realms/master/protocol/openid-connect/token",
                    data={"grant_type": "password", "client_id": "admin-cli",
                          "username": ADMIN_USER, "password": ADMIN_PASSWORD},
                )
                grant.raise_for_status()
                headers = {"Authorization": f"Bearer {grant.json()['access_token']}"}
                client.delete(realm, headers=headers).raise_for_status()
                realm_json = json.loads(REALM_FILE.read_text())
                client.post(admin, headers=headers, json=realm_json).raise_for_status()
        except httpx.HTTPError as exc:
            raise StackError(f"keycloak: replacing realm {endpoints.KEYCLOAK_REALM}: {exc}") from exc

    def check_ready(self) -> None:
        http_ready(f"{self.base_url}/realms/{endpoints.KEYCLOAK_REALM}/.well-known/openid-configuration")

    def describe(self) -> str:
        return f"{self.base_url}/realms/{endpoints.KEYCLOAK_REALM} (admin console: admin/admin)"
