"""The operator views (realm role iot-admin): pipeline health, dead letters, Kafka, Cassandra."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/ops")
