"""Default addresses of the local stack (docs/contract.md "Ports"), defined once.

Each service's settings class uses these as defaults; environment variables override them.
"""

from __future__ import annotations

HOST = "localhost"

MQTT_TLS_PORT = 8883
KAFKA_PORT = 9092
CASSANDRA_PORT = 9042
KEYCLOAK_PORT = 8088
FLINK_REST_PORT = 8081
QUERY_API_PORT = 8083
CONSOLE_PORT = 8085
PROMETHEUS_PORT = 9090
# Not in the contract: ports of our own metrics/health endpoints and internal listeners.
BRIDGE_METRICS_PORT = 9101
WRITER_METRICS_PORT = 9102
KAFKA_CONTROLLER_PORT = 9093
CASSANDRA_STORAGE_PORT = 7000
FLINK_RPC_PORT = 6123

KAFKA_BOOTSTRAP = f"{HOST}:{KAFKA_PORT}"
CASSANDRA_HOSTS = HOST
KEYCLOAK_URL = f"http://{HOST}:{KEYCLOAK_PORT}"
FLINK_REST_URL = f"http://{HOST}:{FLINK_REST_PORT}"

KEYCLOAK_REALM = "iot"
KEYCLOAK_CLIENT_ID = "query-service"
CASSANDRA_KEYSPACE = "iot"
