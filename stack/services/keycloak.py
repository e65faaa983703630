"""Keycloak 26 (Quarkus distribution) with the realm `iot` imported on first start.

The server zip comes from Maven Central (stack/maven/keycloak.pom.xml), built once into the shared
cache (stack/services/keycloak_dist.py); each clone runs it from its own home under
.stack/keycloak/home with `start --optimized` (~8 s of CPU once the database exists).
"""

from __future__ import annotations

import json
import logging

import httpx

from gateway import endpoints
from stack.errors import StackError
from stack.process import ProcessSpec
from stack.service import Service, StatePath, http_ready
from stack.services import keycloak_admin
from stack.services.keycloak_dist import (
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

    kc_home = StatePath("home")
    _imported_marker = StatePath("realm-imported.sha256")

    @property
    def base_url(self) -> str:
        return f"http://{endpoints.HOST}:{self.settings.keycloak_port}"

    def install(self) -> None:
        server = ensure_server(self.settings)
        link_home(self.kc_home, server)
        cache_admin_password = seed_database(self.settings, server, self.kc_home)
        if cache_admin_password is not None:
            # The seeded database holds the current realm file's import, and the cache's admin.
            self._imported_marker.write_text(realm_digest() + "\n")
            keycloak_admin.note_seeded(self.settings, cache_admin_password)

    def own_ports(self) -> tuple[int, ...]:
        return (self.settings.keycloak_port,)

    def processes(self) -> list[ProcessSpec]:
        home = self.kc_home
        argv = server_argv(self.settings, home, self.settings.keycloak_port)
        env = server_env(self.settings, keycloak_admin.admin_password(self.settings))
        return [self.spec("keycloak", argv, cwd=home, env=env, marker=f"-Dkc.home.dir={home}")]

    def initialise(self) -> None:
        """The administrator's and the users' passwords as configured; the stored realm replaced
        when iot-realm.json changed since it was imported.

        --import-realm skips an existing realm, so without this an edited realm file would need
        `iot down --purge`. Replacing drops the realm's sessions and keys: only on a change.
        """
        realm_json = json.loads(REALM_FILE.read_text())
        digest = realm_digest()
        try:
            imported = self._imported_marker.read_text().strip()
        except OSError:
            imported = digest  # just imported by this start (or a state older than the marker)
        try:
            with httpx.Client(timeout=60.0) as client:
                admin = keycloak_admin.login(client, self.settings, self.base_url)
                if imported != digest:
                    log.info("keycloak: %s changed since its import; replacing the realm", REALM_FILE.name)
                    self._replace_realm(admin, realm_json)
                self._imported_marker.write_text(digest + "\n")
                users = [user["username"] for user in realm_json.get("users", [])]
                keycloak_admin.apply_user_passwords(admin, self.settings, users)
        except httpx.HTTPError as exc:
            raise StackError(f"keycloak: setting up realm {endpoints.KEYCLOAK_REALM}: {exc}") from exc

    def _replace_realm(self, admin: keycloak_admin.Admin, realm_json: dict[str, object]) -> None:
        realms = f"{self.base_url}/admin/realms"
        admin.client.delete(f"{realms}/{endpoints.KEYCLOAK_REALM}", headers=admin.headers).raise_for_status()
        keycloak_admin.forget_user_passwords(self.settings)
        admin.client.post(realms, headers=admin.headers, json=realm_json).raise_for_status()

    def check_ready(self) -> None:
        http_ready(f"{self.base_url}/realms/{endpoints.KEYCLOAK_REALM}/.well-known/openid-configuration")

    def describe(self) -> str:
        password = keycloak_admin.shown_admin_password(self.settings) or "(set at the first start)"
        kept = keycloak_admin.admin_password_file(self.settings)
        return (
            f"{self.base_url}/realms/{endpoints.KEYCLOAK_REALM} "
            f"(admin console: {keycloak_admin.ADMIN_USER} / {password}, in {kept})"
        )
