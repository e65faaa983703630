"""The emulator's settings (IOT_ prefix); command-line options override them."""

from __future__ import annotations

from pydantic_settings import SettingsConfigDict

from gateway.settings import CassandraConnection, MqttConnection, StackDirSettings


class EmulatorSettings(StackDirSettings, MqttConnection, CassandraConnection):
    """Certificates under IOT_STACK_DIR, the registry in Cassandra (gateway.settings), and the fleet."""

    model_config = SettingsConfigDict(env_prefix="IOT_", extra="ignore")

    # Same names as StackSettings, so IOT_EMULATOR_DEVICES means one thing everywhere.
    emulator_devices: int = 50
    emulator_rate: float = 1.0
    emulator_tenant: str = "tenant-a"
    emulator_prefix: str = "dev"
