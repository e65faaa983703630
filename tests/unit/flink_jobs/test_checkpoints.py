import os
from pathlib import Path

from flink_jobs import checkpoints


def _checkpoint(root: Path, job_id: str, n: int, mtime: float) -> Path:
    directory = root / job_id / f"chk-{n}"
    directory.mkdir(parents=True)
    (directory / "_metadata").write_bytes(b"x")
    os.utime(directory / "_metadata", (mtime, mtime))
    return directory


def test_newest_checkpoint_of_the_lineage_only(tmp_path: Path) -> None:
    _checkpoint(tmp_path, "old", 3, 100)
    newest = _checkpoint(tmp_path, "new", 1, 200)
    _checkpoint(tmp_path, "someone-else", 9, 300)  # another job's state is never picked
    checkpoints.record_job(tmp_path, "iot", "old", "p1")
    checkpoints.record_job(tmp_path, "iot", "new", "p2")
    latest = checkpoints.latest_checkpoint(tmp_path, "iot")
    assert latest == checkpoints.Checkpoint(newest, "p2")


def test_no_lineage_no_checkpoint(tmp_path: Path) -> None:
    assert checkpoints.latest_checkpoint(tmp_path, "iot") is None
    checkpoints.record_job(tmp_path, "iot", "j", "p")
    assert checkpoints.latest_checkpoint(tmp_path, "iot") is None  # submitted, never checkpointed


def test_fingerprint_follows_the_statements() -> None:
    assert checkpoints.plan_fingerprint(["a", "b"]) == checkpoints.plan_fingerprint(["a", "b"])
    assert checkpoints.plan_fingerprint(["a", "b"]) != checkpoints.plan_fingerprint(["a", "c"])


def test_the_plan_a_job_was_submitted_with(tmp_path: Path) -> None:
    assert checkpoints.recorded_plan(tmp_path, "iot", "j1") is None
    checkpoints.record_job(tmp_path, "iot", "j1", "p1")
    checkpoints.record_job(tmp_path, "iot", "j2", "p2")
    assert checkpoints.recorded_plan(tmp_path, "iot", "j1") == "p1"
    assert checkpoints.recorded_plan(tmp_path, "iot", "j2") == "p2"
    assert checkpoints.recorded_plan(tmp_path, "iot", "elsewhere") is None  # not ours: left alone
