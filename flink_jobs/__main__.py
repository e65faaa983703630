"""`iot flink-job` / `python -m flink_jobs`: submit the aggregation job unless it already runs."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from flink_jobs import checkpoints
from flink_jobs.config import FlinkJobSettings
from flink_jobs.job import statements, submit
from flink_jobs.rest import FlinkRest

log = logging.getLogger("flink_jobs")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="iot flink-job", description=__doc__)
    parser.add_argument(
        "--restore",
        default="auto",
        help="'auto' (newest checkpoint of this job's lineage), 'none', or a checkpoint path",
    )
    parser.add_argument("--force", action="store_true", help="submit even if the job is running")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = FlinkJobSettings()
    log.info("settings: %s", settings.model_dump_json())
    rest = FlinkRest(settings.rest_url)
    try:
        running = rest.active_job(settings.job_name)
        if running is not None and not args.force:
            log.info("job %s already %s (%s)", settings.job_name, running["state"], running["jid"])
            return 0
    finally:
        rest.close()
    plan = checkpoints.plan_fingerprint(statements(settings))
    restore: Path | None
    if args.restore == "auto":
        latest = checkpoints.latest_checkpoint(settings.checkpoint_dir, settings.job_name)
        if latest is not None and latest.plan != plan:
            log.error(
                "the job's SQL changed since checkpoint %s was written; its state may not fit. "
                "Resume anyway with `iot flink-job --restore %s`, or start afresh with "
                "`iot flink-job --restore none` (the all-time rollup then restarts from the "
                "consumer group's offsets)", latest.path, latest.path,
            )
            return 2
        restore = latest.path if latest else None
    elif args.restore == "none":
        restore = None
    else:
        restore = Path(args.restore)
    job_id = submit(settings, restore)
    checkpoints.record_job(settings.checkpoint_dir, settings.job_name, job_id, plan)
    sys.stdout.write(job_id + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
