"""Settings of the native stack runner (environment variables prefixed IOT_)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway import endpoints
from stack import java

REPO_ROOT = Path(__file__).resolve().parent.parent


def _default_java21_home(data: dict[str, Any]) -> Path:
    cache_dir: Path = data["cache_dir"]
    return java.default_java21_home(cache_dir)


class StackSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    stack_dir: Path = REPO_ROOT / ".stack"
    # Downloaded artifacts are shared by every clone on the machine and survive `down --purge`.
    cache_dir: Path = Path.home() / ".cache" / "iot-pipeline"
    # Found on the machine by version (stack/java.py); `iot up` installs them when missing.
    java17_home: Path = Field(default_factory=java.default_java17_home)
    java21_home: Path = Field(default_factory=_default_java21_home)

    mqtt_port: int = endpoints.MQTT_TLS_PORT
    kafka_port: int = endpoints.KAFKA_PORT
    kafka_controller_port: int = endpoints.KAFKA_CONTROLLER_PORT
    cassandra_port: int = endpoints.CASSANDRA_PORT
    cassandra_storage_port: int = endpoints.CASSANDRA_STORAGE_PORT
    keycloak_port: int = endpoints.KEYCLOAK_PORT
    flink_rest_port: int = endpoints.FLINK_REST_PORT
    flink_rpc_port: int = endpoints.FLINK_RPC_PORT
    query_api_port: int = endpoints.QUERY_API_PORT
    console_port: int = endpoints.CONSOLE_PORT

    # Small explicit heaps: the whole idle stack must fit in 4 GiB on a 2-core machine.
    kafka_heap: str = "384m"
    cassandra_heap: str = "768m"
    keycloak_heap: str = "384m"
    flink_jobmanager_memory: str = "768m"
    flink_taskmanager_memory: str = "1280m"
    # The pipeline job takes one slot; the rest let tests and benchmarks run job instances beside it.
    flink_task_slots: int = 4
    # SimpleStrategy replication of the application keyspace; 1 on the single local node.
    cassandra_replication_factor: int = 1
    # The Keycloak admin console's password; unset, one is generated on the first start and kept
    # in .stack/keycloak/admin-password (stack/services/keycloak_admin.py).
    keycloak_admin_password: SecretStr | None = None
    # The realm users' passwords: everyone's, and per user (JSON: {"client1": "..."}).
    keycloak_user_password: SecretStr = SecretStr("temp")
    keycloak_user_passwords: dict[str, SecretStr] = Field(default_factory=dict)

    ready_timeout_s: float = 180.0
    # `make up` also starts the default emulator (docs/contract.md: 50 devices, 1 reading/s each).
    emulator_devices: int = 50
    emulator_rate: float = 1.0
    emulator_tenant: str = "tenant-a"

    @cached_property
    def run_dir(self) -> Path:
        return self.stack_dir / "run"

    @cached_property
    def log_dir(self) -> Path:
        return self.stack_dir / "logs"

    @cached_property
    def pki_dir(self) -> Path:
        return self.stack_dir / "pki"

    def service_dir(self, name: str) -> Path:
        return self.stack_dir / name
