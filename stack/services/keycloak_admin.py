"""Keycloak's secrets: the master realm administrator's password and the realm users' passwords.

The administrator's password is IOT_KEYCLOAK_ADMIN_PASSWORD, or one generated on the first
`make up` and kept in .stack/keycloak/admin-password (mode 0600) once the administrator has it;
`iot status` and the `make up` summary show it. Keycloak creates that administrator once, on the
first start of an empty database; a database seeded from the shared cache
(keycloak_dist.seed_database) comes with the cache's own administrator instead, and a database
of an older stack with admin/admin: `login`, after each start, gives it this stack's password.

The realm file gives every user the development password `temp` (docs/contract.md);
IOT_KEYCLOAK_USER_PASSWORD (everyone) or IOT_KEYCLOAK_USER_PASSWORDS (JSON, per user) replace it,
set through the admin API after the start and again whenever they change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import httpx

from gateway import endpoints
from stack.config import StackSettings
from stack.errors import StackError

log = logging.getLogger(__name__)

ADMIN_USER = "admin"
# What stacks made before the password was generated have, and what a cached database seeded
# before then holds.
LEGACY_ADMIN_PASSWORD = "admin"
# The realm file's password of every user (docs/contract.md: client1, client2 with `temp`).
DEFAULT_USER_PASSWORD = "temp"


def admin_password_file(settings: StackSettings) -> Path:
    return settings.service_dir("keycloak") / "admin-password"


def _seeded_password_file(settings: StackSettings) -> Path:
    """The cache's administrator password, while a seeded database still has it."""
    return settings.service_dir("keycloak") / "admin-password.seeded"


def _users_marker(settings: StackSettings) -> Path:
    return settings.service_dir("keycloak") / "user-passwords.applied"


def write_secret(path: Path, text: str) -> None:
    """`text` in `path`, readable by its owner only from the first byte on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")
    os.replace(staged, path)


def _read_secret(path: Path) -> str | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def new_password() -> str:
    return secrets.token_urlsafe(18)


def _pending_password_file(settings: StackSettings) -> Path:
    """A generated password not yet given to the administrator."""
    return settings.service_dir("keycloak") / "admin-password.new"


def admin_password(settings: StackSettings) -> str:
    """The administrator's password to be: IOT_KEYCLOAK_ADMIN_PASSWORD, else the one it has
    (kept), else a new one (kept as pending until `login` gives it to the administrator)."""
    current = shown_admin_password(settings)
    if current is not None:
        return current
    pending = _read_secret(_pending_password_file(settings))
    if pending is None:
        pending = new_password()
        write_secret(_pending_password_file(settings), pending)
    return pending


def shown_admin_password(settings: StackSettings) -> str | None:
    """The administrator's password as configured, or as given to it; None before the first start."""
    if settings.keycloak_admin_password is not None:
        return settings.keycloak_admin_password.get_secret_value()
    return _read_secret(admin_password_file(settings))


def user_password(settings: StackSettings, username: str) -> str:
    """The password a realm user has after `iot up` (`temp` unless configured)."""
    per_user = settings.keycloak_user_passwords.get(username)
    chosen = per_user if per_user is not None else settings.keycloak_user_password
    return chosen.get_secret_value()


def note_seeded(settings: StackSettings, cache_password: str) -> None:
    """The database was just copied from the cache: its administrator has `cache_password`."""
    write_secret(_seeded_password_file(settings), cache_password)
    # The copy holds the realm file's user passwords, whatever was applied before.
    _users_marker(settings).unlink(missing_ok=True)


def forget_user_passwords(settings: StackSettings) -> None:
    """The realm was re-imported: its users have the realm file's passwords again."""
    _users_marker(settings).unlink(missing_ok=True)


class Admin:
    """Admin REST API calls as the master realm's administrator."""

    def __init__(self, client: httpx.Client, base_url: str, token: str) -> None:
        self.client = client
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}

    def set_password(self, realm: str, username: str, password: str) -> None:
        users = self.client.get(
            f"{self.base_url}/admin/realms/{realm}/users",
            params={"username": username, "exact": "true"},
            headers=self.headers,
        )
        users.raise_for_status()
        found = [u for u in users.json() if u.get("username") == username]
        if not found:
            raise StackError(f"keycloak: no user {username!r} in realm {realm}")
        self.client.put(
            f"{self.base_url}/admin/realms/{realm}/users/{found[0]['id']}/reset-password",
            json={"type": "password", "value": password, "temporary": False},
            headers=self.headers,
        ).raise_for_status()


def admin_token(client: httpx.Client, base_url: str, password: str) -> str | None:
    """An admin-cli token of the master realm's administrator, or None if `password` is wrong."""
    grant = client.post(
        f"{base_url}/realms/master/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": "admin-cli",
            "username": ADMIN_USER,
            "password": password,
        },
    )
    if grant.status_code in (400, 401):
        return None
    grant.raise_for_status()
    token: str = grant.json()["access_token"]
    return token


def login(client: httpx.Client, settings: StackSettings, base_url: str) -> Admin:
    """Signed in as the administrator, whose password is made this stack's one on the way.

    Tried in turn: this stack's password, the cache's (a seeded database), the one kept before
    IOT_KEYCLOAK_ADMIN_PASSWORD changed it, the legacy one."""
    wanted = admin_password(settings)
    seeded = _seeded_password_file(settings)
    candidates = [
        wanted,
        _read_secret(seeded),
        _read_secret(admin_password_file(settings)),
        LEGACY_ADMIN_PASSWORD,
    ]
    for candidate in _unique(candidates):
        token = admin_token(client, base_url, candidate)
        if token is None:
            continue
        admin = Admin(client, base_url, token)
        if candidate != wanted:
            admin.set_password("master", ADMIN_USER, wanted)
            log.info(
                "keycloak: the admin console's password is now the one in %s", admin_password_file(settings)
            )
        write_secret(admin_password_file(settings), wanted)
        seeded.unlink(missing_ok=True)
        _pending_password_file(settings).unlink(missing_ok=True)
        return admin
    raise StackError(
        f"keycloak: the administrator's password is none of those known; set IOT_KEYCLOAK_ADMIN_PASSWORD "
        f"to its current one, or delete {settings.service_dir('keycloak')} to start afresh"
    )


def apply_user_passwords(admin: Admin, settings: StackSettings, usernames: Iterable[str]) -> None:
    """Give the realm's users their configured passwords, unless they have them already."""
    users = sorted(usernames)
    wanted = {name: user_password(settings, name) for name in users}
    marker = _users_marker(settings)
    kept = _read_secret(marker)
    if kept is None and all(password == DEFAULT_USER_PASSWORD for password in wanted.values()):
        return  # as imported
    salt = kept.split(":", 1)[0] if kept is not None else secrets.token_hex(16)
    digest = f"{salt}:{hashlib.sha256((salt + json.dumps(wanted, sort_keys=True)).encode()).hexdigest()}"
    if digest == kept:
        return
    for name in users:
        admin.set_password(endpoints.KEYCLOAK_REALM, name, wanted[name])
    write_secret(marker, digest)
    log.info("keycloak: configured passwords set for %s", ", ".join(users))


def _unique(values: Iterable[str | None]) -> list[str]:
    seen: list[str] = []
    for value in values:
        if value is not None and value not in seen:
            seen.append(value)
    return seen
