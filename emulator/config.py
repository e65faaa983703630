"""The emulator's settings (IOT_ prefix); command-line options override them."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict

from gateway import endpoints
from stack.config import REPO_ROOT


class EmulatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    stack_dir: Path = REPO_ROOT / ".stack"
    mqtt_host: str = endpoints.HOST
    mqtt_port: int = endpoints.MQTT_TLS_PORT
    cassandra_hosts: str = endpoints.CASSANDRA_HOSTS
    cassandra_port: int = endpoints.CASSANDRA_PORT
    cassandra_keyspace: str = endpoints.CASSANDRA_KEYSPACE
    # Same names as StackSettings, so IOT_EMULATOR_DEVICES means one thing everywhere.
    emulator_devices: int = 50
    emulator_rate: float = 1.0
    emulator_tenant: str = "tenant-a"
    emulator_prefix: str = "dev"

    @cached_property
    def pki_dir(self) -> Path:
        return self.stack_dir / "pki"
