"""Helpers of the query API's integration tests and benchmark: real Keycloak tokens, the API as a
subprocess on a free port, rows written straight into the aggregate tables."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
from cassandra.cluster import Session

from gateway import endpoints
from query_api.config import QueryApiSettings
from stack.config import StackSettings
from stack.services import keycloak_admin

KEYCLOAK = endpoints.KEYCLOAK_URL
CLIENT_ID = endpoints.KEYCLOAK_CLIENT_ID
# A client the test API is told to accept besides query-service (short_lived_client).
SHORT_LIVED_CLIENT = "qa-short-lived"


def user_password(username: str) -> str:
    """The realm user's password as the stack set it (`temp` unless configured)."""
    return keycloak_admin.user_password(StackSettings(), username)


def admin_password() -> str:
    """The master realm administrator's password, from where the stack keeps it."""
    password = keycloak_admin.shown_admin_password(StackSettings())
    assert password is not None, "Keycloak has not been started by the stack runner yet"
    return password


def token_response(
    username: str,
    password: str | None = None,
    realm: str = endpoints.KEYCLOAK_REALM,
    client_id: str = CLIENT_ID,
    **extra: str,
) -> httpx.Response:
    return httpx.post(
        f"{KEYCLOAK}/realms/{realm}/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": client_id,
            "username": username,
            "password": user_password(username) if password is None else password,
            **extra,
        },
        timeout=10.0,
    )


def password_token(
    username: str,
    password: str | None = None,
    realm: str = endpoints.KEYCLOAK_REALM,
    client_id: str = CLIENT_ID,
) -> str:
    response = token_response(username, password, realm, client_id)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


def admin_headers() -> dict[str, str]:
    """The master realm's administrator (its password kept by the stack's Keycloak service)."""
    return {"Authorization": f"Bearer {password_token('admin', admin_password(), 'master', 'admin-cli')}"}


@contextlib.contextmanager
def throwaway_user(password: str) -> Iterator[str]:
    """A user of realm `iot` (tenant-a) made for one test and deleted afterwards: lock-outs and
    failed logins of a test never touch the contract's users."""
    base = f"{KEYCLOAK}/admin/realms/{endpoints.KEYCLOAK_REALM}/users"
    username = f"qa-user-{uuid.uuid4().hex[:10]}"
    body = {
        "username": username,
        "enabled": True,
        "email": f"{username}@tenant-a.example",
        "emailVerified": True,
        "firstName": "Test",
        "lastName": "User",
        "attributes": {"tenant": ["tenant-a"]},
        "requiredActions": [],
        "credentials": [{"type": "password", "value": password, "temporary": False}],
    }
    httpx.post(base, json=body, headers=admin_headers(), timeout=10.0).raise_for_status()
    try:
        yield username
    finally:
        for made in httpx.get(
            base, params={"username": username, "exact": "true"}, headers=admin_headers()
        ).json():
            httpx.delete(f"{base}/{made['id']}", headers=admin_headers(), timeout=10.0)


@contextlib.contextmanager
def short_lived_client(lifespan_s: int, client_id: str = SHORT_LIVED_CLIENT) -> Iterator[str]:
    """A temporary public client of realm `iot` whose access tokens live `lifespan_s` seconds,
    with the same audience and tenant claims as query-service; deleted afterwards. An API
    accepts its tokens only when told to (IOT_KEYCLOAK_ACCEPTED_CLIENTS, accepting_env)."""
    base = f"{KEYCLOAK}/admin/realms/{endpoints.KEYCLOAK_REALM}/clients"
    headers = admin_headers()
    for old in httpx.get(base, params={"clientId": client_id}, headers=headers).json():
        httpx.delete(f"{base}/{old['id']}", headers=headers).raise_for_status()
    body = {
        "clientId": client_id,
        "publicClient": True,
        "directAccessGrantsEnabled": True,
        "standardFlowEnabled": False,
        "attributes": {"access.token.lifespan": str(lifespan_s)},
        "protocolMappers": [
            {
                "name": "aud",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-audience-mapper",
                "config": {"included.client.audience": CLIENT_ID, "access.token.claim": "true"},
            },
            {
                "name": "tenant",
                "protocol": "openid-connect",
                "protocolMapper": "oidc-usermodel-attribute-mapper",
                "config": {
                    "user.attribute": "tenant",
                    "claim.name": "tenant",
                    "jsonType.label": "String",
                    "access.token.claim": "true",
                },
            },
        ],
    }
    httpx.post(base, json=body, headers=headers).raise_for_status()
    try:
        yield client_id
    finally:
        for made in httpx.get(base, params={"clientId": client_id}, headers=admin_headers()).json():
            httpx.delete(f"{base}/{made['id']}", headers=admin_headers())


def accepting_env(*client_ids: str) -> dict[str, str]:
    """The environment of an API that also accepts access tokens of `client_ids`."""
    accepted = QueryApiSettings().keycloak_accepted_clients
    return {"IOT_KEYCLOAK_ACCEPTED_CLIENTS": ",".join([accepted, *client_ids])}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RunningApi(NamedTuple):
    base: str
    pid: int


@contextlib.contextmanager
def running_api(
    log_file: Path, extra_env: dict[str, str] | None = None, source: Path | None = None
) -> Iterator[RunningApi]:
    """`python -m query_api` on a free port until the block ends; yields its URL and pid.
    `source`: the API of another checkout (a benchmark's baseline), this venv's packages."""
    port = free_port()
    env = {
        **os.environ,
        "IOT_QUERY_API_HOST": "127.0.0.1",
        "IOT_QUERY_API_PORT": str(port),
        **(extra_env or {}),
    }
    if source is not None:
        # Ahead of the editable install (its finder comes after the path); this stack's state.
        env.update(PYTHONPATH=str(source), IOT_STACK_DIR=str(StackSettings().stack_dir))
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "query_api"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=source,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"query API exited ({proc.returncode}); see {log_file}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"query API not healthy after 60 s; see {log_file}")
            time.sleep(0.2)
        yield RunningApi(base, proc.pid)
    finally:
        stop_child(proc, 20)


def stop_child(proc: subprocess.Popen[Any], timeout_s: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within timeout_s."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def register(session: Session, device_id: str, tenant: str) -> None:
    # Straight into the registry table (gateway/registry.py's), no certificate needed here.
    session.execute(
        "INSERT INTO iot.devices (device_id, tenant, created_at) VALUES (%s, %s, toTimestamp(now()))",
        (device_id, tenant),
    )


def insert_windows(
    session: Session,
    table: str,
    device_id: str,
    starts_ms: Sequence[int],
    width_ms: int,
    metrics: Sequence[str],
) -> list[dict[str, Any]]:
    """Rows for every (start, metric); returns the items the API should answer, in its order."""
    bucket_column = "bucket_month" if table == "agg_1m" else "bucket_year"
    insert = session.prepare(
        f"INSERT INTO iot.{table} (device_id, {bucket_column}, window_start, metric, window_end,"
        " count, sum, min, max, avg) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    expected = []
    for index, start in enumerate(sorted(starts_ms)):
        moment = datetime.fromtimestamp(start / 1000, UTC)
        bucket: str | int = moment.strftime("%Y-%m") if table == "agg_1m" else moment.year
        for offset, metric in enumerate(sorted(metrics)):
            count = 10 + index
            low, high = float(index), float(index + offset + 1)
            total = (low + high) / 2 * count
            session.execute(
                insert,
                (device_id, bucket, start, metric, start + width_ms, count, total, low, high, total / count),
            )
            expected.append(
                {
                    "windowStart": iso_ms(start),
                    "windowEnd": iso_ms(start + width_ms),
                    "metric": metric,
                    "count": count,
                    "sum": total,
                    "min": low,
                    "max": high,
                    "avg": total / count,
                }
            )
    return expected


def iso_ms(millis: int) -> str:
    return datetime.fromtimestamp(millis / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
