"""What `make up` prints when everything is healthy: where things are and how to query."""

from __future__ import annotations

import sys

from gateway import endpoints
from stack.config import StackSettings
from stack.services import keycloak_admin


def print_summary(settings: StackSettings) -> None:
    device = "dev-00000"
    keycloak = f"http://localhost:{settings.keycloak_port}"
    api = f"http://localhost:{settings.query_api_port}"
    pki = settings.pki_dir
    admin_password = keycloak_admin.shown_admin_password(settings) or "(not set yet: iot status)"
    text = f"""
The pipeline is up.

  Flink web UI      http://localhost:{settings.flink_rest_port}
  Keycloak          {keycloak}   (admin / {admin_password}, in {keycloak_admin.admin_password_file(settings)})
  Web console       http://localhost:{settings.console_port}   (client1 / temp, admin1 / temp)
  Query API docs    {api}/docs
  MQTT (mTLS)       localhost:{settings.mqtt_port}   CA {pki}/ca.crt
  Kafka             localhost:{settings.kafka_port}
  Cassandra (CQL)   localhost:{settings.cassandra_port}
  Prometheus        http://localhost:{endpoints.PROMETHEUS_PORT}   (firing alerts: .venv/bin/iot status)

Watch live telemetry:
  mosquitto_sub -h localhost -p {settings.mqtt_port} --cafile {pki}/ca.crt \\
    --cert {pki}/operator.crt --key {pki}/operator.key -t 'devices/#' -v

Query an emulated device (its first 1-minute window appears about a minute after start):
  TOKEN=$(curl -s -X POST {keycloak}/realms/{endpoints.KEYCLOAK_REALM}/protocol/openid-connect/token \\
    -d grant_type=password -d client_id={endpoints.KEYCLOAK_CLIENT_ID} \\
    -d username=client1 -d password=temp | jq -r .access_token)
  curl -H "Authorization: Bearer $TOKEN" {api}/query/{device}/1m

State and logs: {settings.stack_dir}   (.venv/bin/iot status, .venv/bin/iot logs SERVICE)
Stop: make down   (keeps the data; .venv/bin/iot down --purge deletes it)
"""
    sys.stdout.write(text)
