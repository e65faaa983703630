"""Finding the checkpoint to resume from after a `make down` / `make up` or a lost cluster.

Flink writes retained checkpoints to <checkpoint_dir>/<job id>/chk-<n>/_metadata. The submitter
records the ids of the jobs it submitted under a name, with a fingerprint of their SQL, so a
restart resumes the newest completed checkpoint of that lineage, never picks up another job's
state (tests run jobs of their own), and notices when the SQL changed under a checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    plan: str  # fingerprint of the statements that wrote it


def plan_fingerprint(statements: list[str]) -> str:
    return hashlib.sha256("\n;\n".join(statements).encode()).hexdigest()[:16]


def lineage_file(checkpoint_dir: Path, job_name: str) -> Path:
    return checkpoint_dir / f"{job_name}.jobs"


def record_job(checkpoint_dir: Path, job_name: str, job_id: str, plan: str) -> None:
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    with open(lineage_file(checkpoint_dir, job_name), "a") as handle:
        handle.write(f"{job_id} {plan}\n")


def recorded_plan(checkpoint_dir: Path, job_name: str, job_id: str) -> str | None:
    """The fingerprint the job was submitted with, if this lineage submitted it."""
    try:
        lines = lineage_file(checkpoint_dir, job_name).read_text().splitlines()
    except OSError:
        return None
    plans = [plan for jid, _, plan in (line.partition(" ") for line in lines) if jid == job_id]
    return plans[-1] if plans else None


def latest_checkpoint(checkpoint_dir: Path, job_name: str) -> Checkpoint | None:
    """The newest completed checkpoint of the job's lineage, or None."""
    try:
        lines = lineage_file(checkpoint_dir, job_name).read_text().splitlines()
    except OSError:
        return None
    candidates: list[tuple[float, Checkpoint]] = []
    for line in lines:
        job_id, _, plan = line.partition(" ")
        for metadata in (checkpoint_dir / job_id).glob("chk-*/_metadata"):
            candidates.append((metadata.stat().st_mtime, Checkpoint(metadata.parent, plan)))
    if not candidates:
        return None
    return max(candidates, key=lambda item: item[0])[1]
