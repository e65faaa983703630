"""Where each node of the running profile listens, and the credentials its clients present.

The default profile is one node of everything on localhost, without authentication between
services. The replicated profile (docs/replicated.md) runs several Kafka brokers and Cassandra
nodes, each on its own loopback address (127.0.0.N: Linux routes all of 127/8 to lo) and the
contract's ports, with SASL/SCRAM on Kafka and password authentication on Cassandra. Credentials
are generated once under the profile's stack dir (mode 0600) and handed to every service through
its settings (IOT_ environment variables): the same code, configured differently.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from gateway import endpoints, pki
from stack.config import StackSettings

KAFKA_SASL_MECHANISM = "SCRAM-SHA-512"
KAFKA_SECURITY_PROTOCOL = "SASL_PLAINTEXT"
# Brokers authenticate to each other as this user; services as the application user.
KAFKA_ADMIN_USER = "admin"
KAFKA_APP_USER = "iot"
# Cassandra: our superuser (the built-in `cassandra` role is disarmed) and the services' role.
CASSANDRA_ADMIN_ROLE = "iot_admin"
CASSANDRA_APP_ROLE = "iot_app"
CASSANDRA_DEFAULT_ROLE = "cassandra"
CASSANDRA_DEFAULT_PASSWORD = "cassandra"
CLIENT_ENV_FILE = "client.env"


def node_host(node: int) -> str:
    """The loopback address of node N (1-based) of a replicated service."""
    return f"127.0.0.{node}"


def kafka_nodes(settings: StackSettings) -> list[int]:
    return list(range(1, settings.replicated_kafka_brokers + 1)) if settings.replicated else []


def cassandra_nodes(settings: StackSettings) -> list[int]:
    return list(range(1, settings.replicated_cassandra_nodes + 1)) if settings.replicated else []


def kafka_bootstrap(settings: StackSettings) -> str:
    """Clients bootstrap at the contract's address, plus the other brokers when there are any."""
    first = f"{endpoints.HOST}:{settings.kafka_port}"
    rest = [f"{node_host(n)}:{settings.kafka_port}" for n in kafka_nodes(settings)[1:]]
    return ",".join([first, *rest])


def cassandra_hosts(settings: StackSettings) -> list[str]:
    nodes = cassandra_nodes(settings)
    return [node_host(n) for n in nodes] if nodes else [endpoints.HOST]


# --- credentials ------------------------------------------------------------------------------


def secrets_dir(settings: StackSettings) -> Path:
    return settings.stack_dir / "secrets"


def secret(settings: StackSettings, name: str) -> str:
    """A password generated on first use and kept (0600) under the profile's stack dir."""
    directory = secrets_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o700)
    path = directory / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(24)
    write_private(path, value + "\n")
    return value


def write_private(path: Path, text: str) -> None:
    """A text file only its owner can read (secrets, configuration holding them)."""
    pki.write_private(path, text.encode())


def kafka_password(settings: StackSettings, user: str) -> str:
    return secret(settings, f"kafka-{user}.password")


def cassandra_password(settings: StackSettings, role: str) -> str:
    return secret(settings, f"cassandra-{role}.password")


def kafka_client_config(settings: StackSettings, user: str = KAFKA_APP_USER) -> dict[str, Any]:
    """librdkafka settings for the stack's own clients (readiness, topics, `iot status`)."""
    config: dict[str, Any] = {"bootstrap.servers": kafka_bootstrap(settings)}
    if settings.replicated:
        config.update({
            "security.protocol": KAFKA_SECURITY_PROTOCOL,
            "sasl.mechanism": KAFKA_SASL_MECHANISM,
            "sasl.username": user,
            "sasl.password": kafka_password(settings, user),
        })
    return config


def service_env(settings: StackSettings) -> dict[str, str]:
    """What every one of our services (and tests, and users: client.env) needs to reach the
    profile's Kafka and Cassandra; empty for the default profile, whose defaults are right."""
    if not settings.replicated:
        return {}
    return {
        "IOT_KAFKA_BOOTSTRAP": kafka_bootstrap(settings),
        "IOT_KAFKA_SECURITY_PROTOCOL": KAFKA_SECURITY_PROTOCOL,
        "IOT_KAFKA_SASL_MECHANISM": KAFKA_SASL_MECHANISM,
        "IOT_KAFKA_SASL_USERNAME": KAFKA_APP_USER,
        "IOT_KAFKA_SASL_PASSWORD": kafka_password(settings, KAFKA_APP_USER),
        "IOT_CASSANDRA_HOSTS": ",".join(cassandra_hosts(settings)),
        "IOT_CASSANDRA_USERNAME": CASSANDRA_APP_ROLE,
        "IOT_CASSANDRA_PASSWORD": cassandra_password(settings, CASSANDRA_APP_ROLE),
        "IOT_CASSANDRA_CONSISTENCY": settings.replicated_cassandra_consistency,
        "IOT_CASSANDRA_REPLICATION": cassandra_replication(settings),
        "IOT_FLINK_PARALLELISM": str(settings.replicated_flink_parallelism),
    }


def cassandra_replication(settings: StackSettings) -> str:
    """The application keyspace's replication as a CQL map literal."""
    factor = len(cassandra_nodes(settings)) or settings.cassandra_replication_factor
    return f"{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}"


def prepare(settings: StackSettings) -> None:
    """Before the parallel installs: every secret exists, and client.env for tests and users
    (`set -a; . .stack/replicated/client.env; set +a`)."""
    if not settings.replicated:
        return
    env = service_env(settings)
    for role in (CASSANDRA_ADMIN_ROLE, CASSANDRA_DEFAULT_ROLE):
        cassandra_password(settings, role)
    kafka_password(settings, KAFKA_ADMIN_USER)
    env["IOT_STACK_DIR"] = str(settings.stack_dir)
    env["IOT_PROFILE"] = "replicated"
    lines = ["# Written by `iot up --profile replicated`: the profile's client settings."]
    lines += [f"{key}={value}" for key, value in env.items()]
    write_private(settings.stack_dir / CLIENT_ENV_FILE, "\n".join(lines) + "\n")


def record_profile(settings: StackSettings) -> None:
    """Name the running profile where `iot status` / `iot down` without options look."""
    from stack.config import ACTIVE_PROFILE_FILE

    marker = settings.base_stack_dir / ACTIVE_PROFILE_FILE
    marker.parent.mkdir(parents=True, exist_ok=True)
    if settings.replicated:
        marker.write_text("replicated\n")
    else:
        marker.unlink(missing_ok=True)


def forget_profile(settings: StackSettings) -> None:
    from stack.config import ACTIVE_PROFILE_FILE

    (settings.base_stack_dir / ACTIVE_PROFILE_FILE).unlink(missing_ok=True)
