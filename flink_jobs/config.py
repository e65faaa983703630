"""Settings of the aggregation job (environment variables prefixed IOT_FLINK_ / IOT_)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from gateway import endpoints, topics
from gateway.settings import KafkaConnection, StackDirSettings


def _default_checkpoint_dir(data: dict[str, Any]) -> Path:
    stack_dir: Path = data["stack_dir"]
    return stack_dir / "flink" / "checkpoints"


class FlinkJobSettings(StackDirSettings, KafkaConnection):
    """IOT_KAFKA_BOOTSTRAP and IOT_STACK_DIR come from gateway.settings, shared with every stage."""

    model_config = SettingsConfigDict(env_prefix="IOT_FLINK_", extra="ignore", populate_by_name=True)

    job_name: str = "iot-aggregates"
    rest_url: str = endpoints.FLINK_REST_URL
    source_topic: str = topics.KAFKA_READINGS
    consumer_group: str = "flink-aggregates"
    sink_topic_1m: str = topics.KAFKA_AGG_1M
    sink_topic_1h: str = topics.KAFKA_AGG_1H
    sink_topic_all: str = topics.KAFKA_AGG_ALL

    parallelism: int = 1
    # Bounded out-of-orderness of the contract: a reading up to 10 s late still counts in its window.
    watermark_delay_s: int = 10
    # A quiet Kafka partition must not hold back the watermark (windows would never close).
    idle_timeout_s: int = 5
    checkpoint_interval_s: int = 5
    # Unset: <IOT_STACK_DIR>/flink/checkpoints.
    checkpoint_dir: Path = Field(default_factory=_default_checkpoint_dir)
    # The Kafka SQL connector jar shipped with the job; the stack runner fills it in.
    connector_jar: Path | None = None
    # Batches updates of the all-time rollup, so Kafka, the writer and Cassandra see one upsert per
    # key per interval, however many readings updated it: for 1,000 devices of 3 metrics, 600
    # rows/s, where a 1 s interval made 3,000 and cost the writer and Cassandra 0.73 of this
    # machine's 2 cores (bench capacity, docs/benchmarks.md). An all-time row lags its readings by
    # up to this much more.
    rollup_flush_ms: int = 5000

    # A reading delivered again (same deviceId, ts, seq, metrics) within this many seconds of its
    # first copy counts once. The bridge redelivers within seconds of a crash; an hour also
    # covers a device's persistent session replaying after a long outage of the bridge.
    dedup: bool = True
    # Device groups' aggregates in the same windows (each reading once more per group).
    groups: bool = True
    dedup_horizon_s: int = Field(default=3600, ge=60)
    # 'hashmap' (Flink's heap backend): the horizon's keys on the heap, fast, every checkpoint a
    # full copy; fits the default fleet (50 readings/s: 180,000 keys an hour, ~50 MB). 'rocksdb'
    # bounds memory whatever the rate (3.6 million keys at 1,000 readings/s for an hour would
    # not fit the heap) and checkpoints incrementally, at a third of the throughput measured here
    # (docs/aggregation.md). A change of backend starts the job afresh (its checkpoints differ).
    state_backend: Literal["rocksdb", "hashmap"] = "hashmap"
    # 'readings': the all-time rollup takes every reading as it arrives; 'windows': it takes the
    # closed 1-minute windows plus the late readings (far fewer state accesses; the row moves as
    # minutes close, which the bridge's heartbeats guarantee when the fleet goes quiet).
    all_time_from: Literal["readings", "windows"] = "readings"
