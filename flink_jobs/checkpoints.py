"""Finding the checkpoint to resume from after a `make down` / `make up` or a lost cluster.

Flink writes retained checkpoints to <checkpoint_dir>/<job id>/chk-<n>/_metadata. The submitter
records the ids of the jobs it submitted under a name, so a restart resumes the newest completed
checkpoint of that lineage and never picks up another job's state (tests run jobs of their own).
"""

from __future__ import annotations

from pathlib import Path


def lineage_file(checkpoint_dir: Path, job_name: str) -> Path:
    return checkpoint_dir / f"{job_name}.jobs"


def record_job(checkpoint_dir: Path, job_name: str, job_id: str) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with open(lineage_file(checkpoint_dir, job_name), "a") as handle:
        handle.write(job_id + "\n")


def latest_checkpoint(checkpoint_dir: Path, job_name: str) -> Path | None:
    """The newest completed checkpoint of the job's lineage, or None."""
    try:
        job_ids = lineage_file(checkpoint_dir, job_name).read_text().split()
    except OSError:
        return None
    candidates: list[tuple[float, Path]] = []
    for job_id in job_ids:
        for metadata in (checkpoint_dir / job_id).glob("chk-*/_metadata"):
            candidates.append((metadata.stat().st_mtime, metadata.parent))
    if not candidates:
        return None
    return max(candidates)[1]
