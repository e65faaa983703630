"""`iot flink-job` / `python -m flink_jobs`: submit the aggregation job unless it already runs."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from flink_jobs import checkpoints
from flink_jobs.config import FlinkJobSettings
from flink_jobs.job import statements, submit
from flink_jobs.rest import FlinkRest
from gateway.service_main import run_main

log = logging.getLogger("flink_jobs")
_TERMINAL = {"FINISHED", "CANCELED", "FAILED"}


def main(argv: Sequence[str] | None = None) -> int:
    return run_main("iot flink-job", __doc__, _submit, argv, arguments=_arguments)


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--restore",
        default="auto",
        help="'auto' (newest checkpoint of this job's lineage), 'none', or a checkpoint path",
    )
    parser.add_argument("--force", action="store_true", help="submit even if the job is running")


def _submit(args: argparse.Namespace) -> int:
    settings = FlinkJobSettings()
    log.info("settings: %s", settings.model_dump_json())
    plan = checkpoints.plan_fingerprint(statements(settings))
    rest = FlinkRest(settings.rest_url)
    try:
        running = rest.active_job(settings.job_name)
        if running is not None and not args.force:
            submitted = checkpoints.recorded_plan(
                settings.checkpoint_dir, settings.job_name, running["jid"]
            )
            if submitted in (None, plan):
                log.info("job %s already %s (%s)", settings.job_name, running["state"],
                         running["jid"])
                return 0
            # This lineage's job runs an older version of the SQL: replace it.
            log.warning("job %s (%s) runs an older plan (%s, now %s): cancelling it",
                        settings.job_name, running["jid"], submitted, plan)
            _cancel(rest, running["jid"])
    finally:
        rest.close()
    restore: Path | None
    if args.restore == "auto":
        latest = checkpoints.latest_checkpoint(settings.checkpoint_dir, settings.job_name)
        if latest is not None and latest.plan != plan:
            # A changed plan's operators do not map onto the old state (Flink names them by
            # the plan's shape). A start without state reads the topic from its oldest record,
            # so if nothing has expired from it yet, that start rebuilds every aggregate.
            if not _source_is_whole(settings):
                log.error(
                    "the job's SQL changed since checkpoint %s was written and %s no longer "
                    "holds every reading, so a rebuild would lose the expired ones from the "
                    "all-time rollup. Resume anyway with `iot flink-job --restore %s`, or "
                    "rebuild from what is retained with `iot flink-job --restore none`",
                    latest.path, settings.source_topic, latest.path,
                )
                return 2
            log.warning("the job's SQL changed since checkpoint %s: rebuilding the aggregates "
                        "from the start of %s", latest.path, settings.source_topic)
            latest = None
        restore = latest.path if latest else None
    elif args.restore == "none":
        restore = None
    else:
        restore = Path(args.restore)
    job_id = submit(settings, restore)
    checkpoints.record_job(settings.checkpoint_dir, settings.job_name, job_id, plan)
    sys.stdout.write(job_id + "\n")
    return 0


def _cancel(rest: FlinkRest, job_id: str, timeout_s: float = 120.0) -> None:
    rest.cancel(job_id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(j["jid"] == job_id and j["state"] not in _TERMINAL for j in rest.jobs()):
            return
        time.sleep(1)
    raise TimeoutError(f"job {job_id} did not end within {timeout_s:.0f}s of its cancellation")


def _source_is_whole(settings: FlinkJobSettings) -> bool:
    """True if every partition of the source topic still starts at offset 0."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(settings.kafka_client_config(
        {"group.id": f"{settings.consumer_group}-probe", "log_level": 0}
    ))
    try:
        topic = consumer.list_topics(settings.source_topic, timeout=10).topics[settings.source_topic]
        if topic.error is not None:
            return False
        for partition in topic.partitions:
            low, _ = consumer.get_watermark_offsets(
                TopicPartition(settings.source_topic, partition), timeout=10
            )
            if low > 0:
                return False
        return True
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
