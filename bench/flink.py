"""The aggregation job: readings per second draining a backlog, beside a plain-Python peer
(quixstreams doing the same 1-minute aggregation), and freshness of 1-minute rows in Cassandra.

Targets: at least 60,000 readings/s with deduplication and 80 % of the same job without it (both
drain the same backlog in the same run), 3x the peer; a window's row in Cassandra within 15 s of
the window's end. Throughput runs isolated job instances on a topic of their own with their own
output topics; freshness uses the running pipeline (`make up`): Flink job, writer, Cassandra.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from flink_jobs.config import FlinkJobSettings
from flink_jobs.job import submit
from flink_jobs.rest import FlinkRest
from gateway import endpoints, topics
from gateway.cassandra_session import connect
from gateway.settings import CassandraConnection
from stack.config import StackSettings
from storage.rows import bucket_month

log = logging.getLogger(__name__)

READINGS = 3_000_000
DEVICES = 1_000
METRICS = 3  # per reading
PEER_VENV = "peers-venv"


def _produce_backlog(bootstrap: str, topic: str, count: int) -> float:
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "compression.type": "lz4",
            "queue.buffering.max.messages": 1_000_000,
        }
    )
    rng = random.Random(1)
    base = int(time.time() * 1000) - 6 * 3_600_000
    started = time.monotonic()
    for i in range(count):
        device = f"bench-{i % DEVICES:05d}"
        value = {
            "deviceId": device,
            "tenant": "bench",
            "ts": base + (i // DEVICES) * 1000,
            "metrics": {
                "temperature": 20 + rng.random(),
                "humidity": 40 + rng.random(),
                "battery": 90 + rng.random(),
            },
            "seq": i // DEVICES,
            "receivedAt": int(time.time() * 1000),
        }
        while True:
            try:
                producer.produce(topic, key=device.encode(), value=json.dumps(value).encode())
                break
            except BufferError:
                producer.poll(0.05)
        if i % 10_000 == 0:
            producer.poll(0)
    producer.flush(120)
    return time.monotonic() - started


def consumer_lag(
    bootstrap: str, group: str, topic: str, partitions: int, client: dict[str, Any] | None = None
) -> int:
    """End offsets minus `group`'s committed ones; `client`: more settings (a secured cluster's)."""
    consumer = Consumer(
        {**(client or {}), "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False}
    )
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        committed = consumer.committed(tps, timeout=10)
        lag = 0
        for tp in committed:
            _, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - max(tp.offset, 0)
        return lag
    finally:
        consumer.close()


def position_lag(
    bootstrap: str, topic: str, offsets: dict[int, int], client: dict[str, Any] | None = None
) -> int:
    """End offsets minus the offsets a job has read to (FlinkRest.source_offsets); a partition
    without one counts whole. Never below 0 per partition (the two are read at different
    instants)."""
    consumer = Consumer({**(client or {}), "bootstrap.servers": bootstrap, "group.id": "lag-probe",
                         "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        lag = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            lag += max(0, high - offsets.get(p, low))
        return lag
    finally:
        consumer.close()


def _flink_throughput(
    stack: StackSettings, bootstrap: str, topic: str, run: str, dedup: bool, state_backend: str,
    checkpoint_interval_s: int | None = None,
) -> dict[str, Any]:
    from stack.services.flink import kafka_connector_jar

    run = f"{run}-{'dedup' if dedup else 'plain'}-{state_backend}-{checkpoint_interval_s or 'cp'}"
    checkpoints = {} if checkpoint_interval_s is None else {"checkpoint_interval_s": checkpoint_interval_s}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    sinks = [f"bench.agg.{kind}.{run}" for kind in ("1m", "1h", "all")]
    for fut in admin.create_topics([NewTopic(t, 6, 1) for t in sinks]).values():
        fut.result(30)
    parallelism = int(os.environ.get("IOT_BENCH_FLINK_PARALLELISM", "2"))
    settings = FlinkJobSettings(
        job_name=f"bench-{run}",
        source_topic=topic,
        consumer_group=f"bench-{run}",
        sink_topic_1m=sinks[0],
        sink_topic_1h=sinks[1],
        sink_topic_all=sinks[2],
        kafka_bootstrap=bootstrap,
        rest_url=f"http://localhost:{stack.flink_rest_port}",
        connector_jar=kafka_connector_jar(stack),
        parallelism=parallelism,
        checkpoint_dir=stack.stack_dir / "flink" / "bench-checkpoints",
        dedup=dedup,
        state_backend=state_backend,  # type: ignore[arg-type]
        **checkpoints,  # type: ignore[arg-type]
    )
    rest = FlinkRest(settings.rest_url)
    jvm_before = rest.taskmanager_metrics(_JVM)
    job_id = submit(settings)
    try:
        while (job := rest.active_job(settings.job_name)) is None or job["state"] != "RUNNING":
            time.sleep(0.2)
        running = time.monotonic()
        first, processed = _aggregated(rest, job_id, running)
        while consumer_lag(bootstrap, settings.consumer_group, topic, 6) > 0:
            if time.monotonic() - running > 900:
                raise TimeoutError("the job did not commit the backlog in 15 minutes")
            time.sleep(0.5)
        committed = time.monotonic()
        state = _state_bytes(rest, job_id)
        jvm_after = rest.taskmanager_metrics(_JVM)
    finally:
        rest.cancel(job_id)
        rest.close()
        admin.delete_topics(sinks)
    return {
        # From the first reading read to the last one through the all-time rollup (the slowest
        # aggregation): the rate the job sustains.
        "readings_per_s": round(READINGS / (processed - first)),
        "seconds": round(processed - first, 1),
        # The same, counted from the moment the job was RUNNING (tasks still deploying) ...
        "readings_per_s_from_running": round(READINGS / (processed - running)),
        # ... and up to the checkpoint that committed the last offset (what a restart would skip).
        "seconds_to_committed": round(committed - running, 1),
        "parallelism": parallelism,
        "dedup": dedup,
        "state_backend": state_backend,
        # Of the checkpoint that committed the last offset: the whole job's state, and that of
        # the task holding the deduplication (its state is what grows with readings x horizon).
        "state_bytes": state["total"],
        "state_bytes_per_million_readings": round(state["total"] / (READINGS / 1e6)),
        "dedup_task_state_bytes": state["dedup"],
        "checkpoint_interval_s": settings.checkpoint_interval_s,
        # A heap too small for the horizon shows here first: full collections, seconds in them.
        "taskmanager_heap_max_bytes": int(jvm_after[_HEAP_MAX]),
        "full_gcs": int(jvm_after[_OLD_GC_COUNT] - jvm_before[_OLD_GC_COUNT]),
        "full_gc_seconds": round((jvm_after[_OLD_GC_TIME] - jvm_before[_OLD_GC_TIME]) / 1000, 1),
        "load_average_1m": round(os.getloadavg()[0], 1),
    }


_HEAP_MAX = "Status.JVM.Memory.Heap.Max"
_OLD_GC_COUNT = "Status.JVM.GarbageCollector.G1_Old_Generation.Count"
_OLD_GC_TIME = "Status.JVM.GarbageCollector.G1_Old_Generation.Time"
_JVM = (_HEAP_MAX, _OLD_GC_COUNT, _OLD_GC_TIME)


def _state_bytes(rest: FlinkRest, job_id: str) -> dict[str, int]:
    """Full (not incremental) state size of the newest completed checkpoint, whole job and the
    task whose chain starts with the deduplication."""
    latest = rest.latest_checkpoint(job_id) or {}
    details = rest.checkpoint_details(job_id, int(latest.get("id", 0))) if latest else {}
    names = {v["id"]: v["name"] for v in rest.job(job_id)["vertices"]}
    dedup = sum(int(task.get("state_size", 0)) for vertex, task in details.get("tasks", {}).items()
                if names.get(vertex, "").startswith("Deduplicate"))
    return {"total": int(latest.get("state_size", 0)), "dedup": dedup}


def _aggregated(rest: FlinkRest, job_id: str, running: float) -> tuple[float, float]:
    """(first reading read, last reading counted into the all-time rollup), by the job's own
    operator counts: every reading carries METRICS metrics, each one row into the rollup."""
    first: float | None = None
    while time.monotonic() - running < 900:
        counts = rest.vertex_counts(job_id, ("numRecordsIn",))
        source, rollup = _rows_into(counts, "Source"), _rows_into(counts, "GroupAggregate")
        now = time.monotonic()
        if first is None and source > 0:
            first = now
        if first is not None and rollup >= READINGS * METRICS:
            return first, now
        time.sleep(0.25)
    raise TimeoutError("the job did not aggregate the backlog in 15 minutes")


def _rows_into(counts: dict[str, dict[str, float]], vertex_prefix: str) -> float:
    return sum(c.get("numRecordsIn", 0.0) for name, c in counts.items() if name.startswith(vertex_prefix))


def _peer_python(stack: StackSettings) -> Path:
    venv = stack.stack_dir / PEER_VENV
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "quixstreams"], check=True)
    return python


def _peer_throughput(stack: StackSettings, bootstrap: str, topic: str) -> dict[str, Any]:
    script = Path(__file__).parent / "peers" / "quix_window.py"
    result = subprocess.run(
        [str(_peer_python(stack)), str(script), bootstrap, topic, str(READINGS)],
        capture_output=True,
        text=True,
        timeout=3600,
        check=True,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    return {"seconds": round(figures["seconds"], 1), "readings_per_s": round(READINGS / figures["seconds"])}


def _freshness(stack: StackSettings, bootstrap: str, run: str, minutes: int = 3) -> dict[str, Any]:
    """Real-time readings into iot.readings; first sighting of each 1m row minus its window end."""
    devices = [f"fresh-{run}-{i}" for i in range(5)]
    cassandra = CassandraConnection(cassandra_port=stack.cassandra_port)
    session = connect(cassandra, keyspace=endpoints.CASSANDRA_KEYSPACE)
    cluster = session.cluster
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    seen: dict[tuple[str, int], float] = {}
    deadline = time.time() + minutes * 60 + 20
    next_send = time.time()
    try:
        while time.time() < deadline:
            now = time.time()
            if now >= next_send:
                for device in devices:
                    value = {
                        "deviceId": device,
                        "tenant": "bench",
                        "ts": int(now * 1000),
                        "metrics": {"temperature": 21.0},
                        "receivedAt": int(now * 1000),
                    }
                    producer.produce(
                        topics.KAFKA_READINGS, key=device.encode(), value=json.dumps(value).encode()
                    )
                producer.poll(0)
                next_send += 1.0
            record_windows(session, devices, seen)
            time.sleep(0.5)
    finally:
        producer.flush(10)
        cluster.shutdown()
    # The pipeline's own job, with the settings the stack gave it (deduplication on by default).
    return {"job_deduplicates": _running_job_deduplicates(stack),
            **freshness_figures(list(seen.values()))}


def _running_job_deduplicates(stack: StackSettings) -> bool | None:
    rest = FlinkRest(f"http://localhost:{stack.flink_rest_port}")
    try:
        job = rest.active_job(FlinkJobSettings().job_name)
        if job is None:
            return None
        return any("Deduplicate[" in v["name"] for v in rest.job(job["jid"])["vertices"])
    finally:
        rest.close()


def record_windows(
    session: Any, devices: list[str], seen: dict[tuple[str, int], float], since_ms: int = 0
) -> None:
    """The first sighting of each 1m row of `devices` (windows from `since_ms` on) in Cassandra,
    as seconds after its window's end, into `seen` by (device, window end)."""
    bucket = bucket_month(int(time.time() * 1000))
    for device in devices:
        for row in session.execute(
            "SELECT window_end FROM agg_1m WHERE device_id=%s AND bucket_month=%s AND window_start>=%s",
            (device, bucket, since_ms),
        ):
            key = (device, int(row.window_end.timestamp()))
            seen.setdefault(key, time.time() - row.window_end.timestamp())


def freshness_figures(delays: list[float], target_s: float = 15) -> dict[str, Any]:
    ordered = sorted(delays)
    if not ordered:
        return {"error": "no 1-minute rows appeared: is `make up` running?"}
    return {
        "windows": len(ordered),
        "p50_s": round(statistics.median(ordered), 1),
        "p99_s": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "target_s": target_s,
    }


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


@contextlib.contextmanager
def _taskmanager_sized(stack: StackSettings, memory: str | None) -> Iterator[None]:
    """The stack's task manager replaced, for the throughput runs, by one of `memory`
    (IOT_BENCH_FLINK_TASKMANAGER_MEMORY, e.g. 3072m: a backlog the size of this one within the
    horizon needs it, docs/aggregation.md), then the stack's own size again. The pipeline's job
    fails over to the new one each time and resumes from its checkpoint."""
    if memory is None or memory == stack.flink_taskmanager_memory:
        yield
        return
    if stack.replicated:
        raise RuntimeError("a resized task manager is for the default profile's single one")
    _swap_taskmanager(stack.model_copy(update={"flink_taskmanager_memory": memory}))
    try:
        yield
    finally:
        _swap_taskmanager(stack)


def _swap_taskmanager(sized: StackSettings) -> None:
    from stack import process
    from stack.services.flink import FlinkService, taskmanager_spec

    service = FlinkService(sized)
    service.install()  # config.yaml and the memory flags of this size
    spec = taskmanager_spec(sized)
    process.stop(spec)
    process.start(spec)
    rest = FlinkRest(f"http://localhost:{sized.flink_rest_port}")
    try:
        deadline = time.monotonic() + 120
        while rest.taskmanager_process_memory() != [parse_size(sized.flink_taskmanager_memory)]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {sized.flink_taskmanager_memory} task manager registered")
            time.sleep(1)
    finally:
        rest.close()
    log.info("task manager of %s registered", sized.flink_taskmanager_memory)


def parse_size(size: str) -> int:
    """Flink's memory size notation (as the stack's settings write it: 1280m, 3g) in bytes."""
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    text = size.strip().lower().removesuffix("b")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def _throughput_runs(stack: StackSettings, bootstrap: str, topic: str, run_id: str) -> dict[str, Any]:
    # The same job with and without deduplication, on the same backlog, in the same run.
    backend = FlinkJobSettings().state_backend
    plain = _flink_throughput(stack, bootstrap, topic, run_id, False, backend)
    flink = _flink_throughput(stack, bootstrap, topic, run_id, True, backend)
    # The heap's full checkpoints of the horizon every interval are part of the step's cost:
    # the same job at other intervals, on request (IOT_BENCH_FLINK_CHECKPOINT_S=15,30).
    intervals = [int(s) for s in os.environ.get("IOT_BENCH_FLINK_CHECKPOINT_S", "").split(",") if s]
    others = [_flink_throughput(stack, bootstrap, topic, run_id, True, backend, interval)
              for interval in intervals]
    # The bounded-memory backend for high rates x long horizons, on request (a slow run).
    rocksdb = (_flink_throughput(stack, bootstrap, topic, run_id, True, "rocksdb")
               if os.environ.get("IOT_BENCH_FLINK_ROCKSDB") == "1" else None)
    # The job without deduplication once more, last: the first ran on a task manager fresh from
    # its start (classes loading, code not yet compiled) and the machine's load drifts; the
    # ratios are to the faster of the two.
    again = _flink_throughput(stack, bootstrap, topic, f"{run_id}-again", False, backend)
    baseline = max(plain["readings_per_s"], again["readings_per_s"])
    return {
        "flink": flink,
        "flink_without_dedup": plain,
        "flink_without_dedup_again": again,
        "dedup_vs_without": round(flink["readings_per_s"] / baseline, 2),
        "flink_dedup_other_checkpoint_intervals": [
            {**other, "vs_without": round(other["readings_per_s"] / baseline, 2)}
            for other in others
        ],
        "flink_dedup_rocksdb": rocksdb,
    }


def _taskmanagers(stack: StackSettings) -> list[str]:
    rest = FlinkRest(f"http://localhost:{stack.flink_rest_port}")
    try:
        return [f"{size / 2**20:.0f}m" for size in rest.taskmanager_process_memory()]
    finally:
        rest.close()


def run() -> dict[str, Any]:
    stack = StackSettings()
    bootstrap = f"{endpoints.HOST}:{stack.kafka_port}"
    run_id = uuid.uuid4().hex[:8]
    uptime_before = _uptime()
    topic = f"bench.readings.{run_id}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, 6, 1)])[topic].result(30)
    # The backlog's 3 million readings all within the horizon need some 600-700 MB of heap for
    # the deduplication alone, more than the stack's default 1280m task manager leaves its tasks
    # (docs/aggregation.md): the throughput runs may have a task manager of their own size.
    sized = os.environ.get("IOT_BENCH_FLINK_TASKMANAGER_MEMORY")
    try:
        produce_s = _produce_backlog(bootstrap, topic, READINGS)
        with _taskmanager_sized(stack, sized):
            taskmanagers = _taskmanagers(stack)
            throughput = _throughput_runs(stack, bootstrap, topic, run_id)
        # The peer and freshness can be left to another run (IOT_BENCH_FLINK_PEER=0,
        # IOT_BENCH_FLINK_FRESHNESS=0), so that one run fits the time it may hold the stack.
        peer = (_peer_throughput(stack, bootstrap, topic)
                if os.environ.get("IOT_BENCH_FLINK_PEER") != "0" else None)
    finally:
        admin.delete_topics([topic])
    freshness = (_freshness(stack, bootstrap, run_id)
                 if os.environ.get("IOT_BENCH_FLINK_FRESHNESS") != "0" else None)
    flink = throughput["flink"]
    return {
        # Figures of a loaded machine are not an idle one's: the load beside them.
        "uptime_before": uptime_before,
        "uptime_after": _uptime(),
        "readings": READINGS,
        # The throughput runs' task manager(s), taskmanager.memory.process.size: the stack's
        # (IOT_FLINK_TASKMANAGER_MEMORY) or the bench's own (IOT_BENCH_FLINK_TASKMANAGER_MEMORY).
        "taskmanager_process_memory": taskmanagers,
        "stack_taskmanager_memory": stack.flink_taskmanager_memory,
        "produce_seconds": round(produce_s, 1),
        **throughput,
        "python_peer_quixstreams": peer,
        "flink_vs_peer": round(flink["readings_per_s"] / peer["readings_per_s"], 2) if peer else None,
        "targets": {"readings_per_s": 60_000, "vs_peer": 3.0, "dedup_vs_without": 0.8},
        "freshness_1m": freshness,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(), indent=2))
