"""The Keycloak realm file and the Keycloak/Flink command lines and config (no services started)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway import endpoints
from stack.config import StackSettings
from stack.services.flink import (
    FlinkService,
    cluster_config,
    conf_dir,
    jobmanager_spec,
    taskmanager_spec,
)
from stack.services.keycloak import REALM_FILE, KeycloakService


@pytest.fixture
def settings(tmp_path: Path) -> StackSettings:
    return StackSettings(
        stack_dir=tmp_path / "stack", keycloak_port=18088, flink_rest_port=18081,
        flink_rpc_port=16123,
    )


@pytest.fixture(scope="module")
def realm() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(REALM_FILE.read_text())
    return loaded


def test_realm_client_is_public_with_password_grant(realm: dict[str, Any]) -> None:
    assert realm["realm"] == endpoints.KEYCLOAK_REALM
    (client,) = [c for c in realm["clients"] if c["clientId"] == endpoints.KEYCLOAK_CLIENT_ID]
    assert client["publicClient"] is True
    assert client["directAccessGrantsEnabled"] is True
    mappers = {m["protocolMapper"]: m["config"] for m in client["protocolMappers"]}
    tenant = mappers["oidc-usermodel-attribute-mapper"]
    assert tenant["user.attribute"] == tenant["claim.name"] == "tenant"
    assert tenant["access.token.claim"] == "true"
    audience = mappers["oidc-audience-mapper"]
    assert audience["included.client.audience"] == endpoints.KEYCLOAK_CLIENT_ID
    assert audience["access.token.claim"] == "true"


def test_realm_users_of_the_contract(realm: dict[str, Any]) -> None:
    users = {u["username"]: u for u in realm["users"]}
    assert users["client1"]["attributes"]["tenant"] == ["tenant-a"]
    assert users["client2"]["attributes"]["tenant"] == ["tenant-b"]
    assert "iot-admin" in users["admin1"]["realmRoles"]
    assert "iot-admin" not in users["client1"]["realmRoles"]
    for user in users.values():
        # A fully set-up account: no required action may block the password grant.
        assert user["enabled"] and user["emailVerified"] and not user["requiredActions"]
        assert user["email"] and user["firstName"] and user["lastName"]
        (credential,) = user["credentials"]
        assert credential == {"type": "password", "value": "temp", "temporary": False}


def test_realm_user_profile_declares_the_tenant_attribute(realm: dict[str, Any]) -> None:
    # Keycloak 26 drops attributes its user profile does not declare, and the claim with them.
    (provider,) = realm["components"]["org.keycloak.userprofile.UserProfileProvider"]
    profile = json.loads(provider["config"]["kc.user.profile.config"][0])
    names = {attribute["name"] for attribute in profile["attributes"]}
    assert {"username", "email", "firstName", "lastName", "tenant"} <= names


def test_keycloak_runs_optimized_on_its_port_with_state_under_stack(
    settings: StackSettings,
) -> None:
    (spec,) = KeycloakService(settings).processes()
    argv = list(spec.argv)
    assert argv[0] == str(settings.java21_home / "bin" / "java")
    assert argv[argv.index("io.quarkus.bootstrap.runner.QuarkusEntryPoint") + 1 :][:2] == [
        "start", "--optimized",
    ]
    assert "--http-port=18088" in argv
    assert "--hostname=http://localhost:18088" in argv
    assert "--import-realm" in argv
    assert f"-Xmx{settings.keycloak_heap}" in argv
    home = settings.stack_dir / "keycloak" / "home"
    assert f"-Dkc.home.dir={home}" in argv
    assert spec.marker == f"-Dkc.home.dir={home}"


def test_flink_config_from_settings(settings: StackSettings) -> None:
    config = cluster_config(settings)
    assert config["rest.port"] == "18081"
    assert config["jobmanager.rpc.port"] == "16123"
    assert config["rest.bind-address"] == endpoints.HOST
    assert config["jobmanager.memory.process.size"] == settings.flink_jobmanager_memory
    assert config["taskmanager.memory.process.size"] == settings.flink_taskmanager_memory
    assert config["taskmanager.numberOfTaskSlots"] == str(settings.flink_task_slots)
    flink_dir = (settings.stack_dir / "flink").as_uri()
    assert config["execution.checkpointing.dir"].startswith(flink_dir)
    assert config["execution.checkpointing.savepoint-dir"].startswith(flink_dir)
    assert config["execution.checkpointing.externalized-checkpoint-retention"] == (
        "RETAIN_ON_CANCELLATION"
    )
    assert config["restart-strategy.type"] == "fixed-delay"
    assert "--add-opens" in config["env.java.opts.all"]


def test_flink_daemons_are_distinct_jvms_we_can_recognise(settings: StackSettings) -> None:
    jm, tm = jobmanager_spec(settings), taskmanager_spec(settings)
    assert FlinkService(settings).processes() == [jm, tm]
    assert "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint" in jm.argv
    assert "org.apache.flink.runtime.taskexecutor.TaskManagerRunner" in tm.argv
    for spec in (jm, tm):
        argv = list(spec.argv)
        assert argv[argv.index("--configDir") + 1] == str(conf_dir(settings))
        # The marker is a command-line argument of this process only.
        assert spec.marker in argv
    assert jm.marker != tm.marker
    assert jm.pid_file != tm.pid_file
