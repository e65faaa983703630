"""Keycloak's secrets under .stack/: the admin console's password and the users' (no services)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from stack.config import StackSettings
from stack.services import keycloak_admin
from stack.services.keycloak import REALM_FILE, KeycloakService


@pytest.fixture
def settings(tmp_path: Path) -> StackSettings:
    return StackSettings(stack_dir=tmp_path / "stack")


def test_the_admin_password_is_generated_once_and_kept_owner_only(settings: StackSettings) -> None:
    assert keycloak_admin.shown_admin_password(settings) is None
    first = keycloak_admin.admin_password(settings)
    assert first != keycloak_admin.LEGACY_ADMIN_PASSWORD and len(first) >= 20
    assert keycloak_admin.admin_password(settings) == first
    # Shown once the administrator has it (login, after the start, writes it).
    assert keycloak_admin.shown_admin_password(settings) is None
    kept = keycloak_admin.admin_password_file(settings)
    keycloak_admin.write_secret(kept, first)
    assert kept.is_relative_to(settings.stack_dir)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert keycloak_admin.admin_password(settings) == first
    assert keycloak_admin.shown_admin_password(settings) == first
    # `iot status` shows it.
    assert first in KeycloakService(settings).describe()


def test_a_configured_admin_password_wins(settings: StackSettings) -> None:
    keycloak_admin.admin_password(settings)
    chosen = settings.model_copy(update={"keycloak_admin_password": SecretStr("s3cret-chosen")})
    assert keycloak_admin.admin_password(chosen) == "s3cret-chosen"
    assert "s3cret-chosen" in KeycloakService(chosen).describe()


def test_the_server_is_bootstrapped_with_the_stacks_admin_password(settings: StackSettings) -> None:
    (spec,) = KeycloakService(settings).processes()
    assert spec.env["KC_BOOTSTRAP_ADMIN_PASSWORD"] == keycloak_admin.admin_password(settings)


def test_user_passwords_default_to_temp_and_are_configurable(settings: StackSettings) -> None:
    users = [u["username"] for u in json.loads(REALM_FILE.read_text())["users"]]
    assert {keycloak_admin.user_password(settings, u) for u in users} == {"temp"}
    custom = settings.model_copy(
        update={
            "keycloak_user_password": SecretStr("everyone"),
            "keycloak_user_passwords": {"client1": SecretStr("only-client1")},
        }
    )
    assert keycloak_admin.user_password(custom, "client1") == "only-client1"
    assert keycloak_admin.user_password(custom, "client2") == "everyone"


def test_realm_guards_against_password_guessing() -> None:
    realm = json.loads(REALM_FILE.read_text())
    assert realm["bruteForceProtected"] is True
    # Temporary lockouts only: a permanent one would let anyone disable any account.
    assert realm["permanentLockout"] is False
    assert 3 <= realm["failureFactor"] <= 10
    assert realm["waitIncrementSeconds"] >= 30
    assert realm["maxFailureWaitSeconds"] >= realm["waitIncrementSeconds"]
