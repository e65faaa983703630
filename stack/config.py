"""Settings of the native stack runner (environment variables prefixed IOT_)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from gateway import endpoints
from gateway.settings import REPO_ROOT as REPO_ROOT  # the runner's paths start here too
from gateway.settings import StackDirSettings
from stack import java

Profile = Literal["default", "replicated"]
# The replicated profile keeps all its state in this subdirectory of the stack dir; the stack dir
# itself names the profile that runs (only one can: both use the contract's ports).
REPLICATED_DIR = "replicated"
ACTIVE_PROFILE_FILE = "active-profile"
_MEMORY_SIZE = r"^[1-9][0-9]{0,5}[kKmMgG]$"


def _default_java21_home(data: dict[str, Any]) -> Path:
    cache_dir: Path = data["cache_dir"]
    return java.default_java21_home(cache_dir)


class StackSettings(StackDirSettings):
    """stack_dir (IOT_STACK_DIR, shared with every service: gateway.settings) holds this
    profile's state: .stack for the default one, .stack/replicated for the other."""

    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    # Unset: the profile recorded by the last `iot up` under stack_dir (stack/profiles.py).
    profile: Profile | None = None
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

    # Small explicit heaps: the whole idle stack must fit in 4 GiB on a 2-core machine. Each one
    # is a size the JVMs read (digits and a unit), nothing that could add an option to their
    # command lines.
    kafka_heap: str = Field(default="384m", pattern=_MEMORY_SIZE)
    cassandra_heap: str = Field(default="768m", pattern=_MEMORY_SIZE)
    keycloak_heap: str = Field(default="384m", pattern=_MEMORY_SIZE)
    flink_jobmanager_memory: str = Field(default="768m", pattern=_MEMORY_SIZE)
    flink_taskmanager_memory: str = Field(default="1280m", pattern=_MEMORY_SIZE)
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

    # The replicated profile (docs/replicated.md): node counts and the heaps of its many JVMs.
    replicated_kafka_brokers: int = Field(default=3, ge=1, le=9)
    replicated_kafka_heap: str = "320m"
    replicated_kafka_min_insync: int = 2
    replicated_cassandra_nodes: int = Field(default=3, ge=1, le=9)
    replicated_cassandra_heap: str = "512m"
    replicated_cassandra_consistency: str = "LOCAL_QUORUM"
    replicated_flink_taskmanagers: int = Field(default=2, ge=1, le=9)
    replicated_flink_taskmanager_memory: str = "1024m"
    replicated_flink_task_slots: int = 2
    replicated_flink_parallelism: int = 2
    replicated_bridges: int = Field(default=2, ge=1, le=9)
    replicated_writers: int = Field(default=2, ge=1, le=9)
    replicated_query_api_workers: int = Field(default=2, ge=1, le=16)

    ready_timeout_s: float = 180.0
    # `make up` also starts the default emulator (docs/contract.md: 50 devices, 1 reading/s each).
    emulator_devices: int = 50
    emulator_rate: float = 1.0
    emulator_tenant: str = "tenant-a"

    @model_validator(mode="after")
    def _profile_state(self) -> StackSettings:
        """The profile decides the state directory: unset, the one `iot up` recorded; the
        replicated one always lives in stack_dir/replicated (given the base or that dir)."""
        if self.profile is None:
            marker = self.stack_dir / ACTIVE_PROFILE_FILE
            recorded = marker.read_text().strip() if marker.exists() else "default"
            self.profile = "replicated" if recorded == "replicated" else "default"
        if self.profile == "replicated" and self.stack_dir.name != REPLICATED_DIR:
            self.stack_dir = self.stack_dir / REPLICATED_DIR
        return self

    @classmethod
    def for_profile(cls, profile: Profile) -> StackSettings:
        """Settings of the named profile (`iot up --profile NAME`), whatever runs now."""
        return cls(profile=profile)

    @property
    def base_stack_dir(self) -> Path:
        """The stack dir of the default profile, where the running profile is recorded."""
        return self.stack_dir.parent if self.replicated else self.stack_dir

    @property
    def replicated(self) -> bool:
        return self.profile == "replicated"

    @cached_property
    def run_dir(self) -> Path:
        return self.stack_dir / "run"

    @cached_property
    def log_dir(self) -> Path:
        return self.stack_dir / "logs"

    def service_dir(self, name: str) -> Path:
        return self.stack_dir / name
