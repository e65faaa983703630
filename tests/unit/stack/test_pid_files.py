"""Pid files: a process of ours is recognised even mid-exec; a stale file is removed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from stack import process
from stack.process import ProcessSpec


def _spec(tmp_path: Path) -> ProcessSpec:
    return ProcessSpec(name="svc", argv=["x"], run_dir=tmp_path, log_file=tmp_path / "svc.log")


def test_a_process_mid_exec_is_still_ours(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    spec.pid_file.write_text(f"{os.getpid()}\n-Dour.config=/stack\n")
    # The launcher (setpriv) is replacing itself with the JVM: the command line reads empty twice.
    answers = iter(["", "", "java -Dour.config=/stack Main"])
    monkeypatch.setattr(process, "_cmdline", lambda pid: next(answers))
    assert process.read_pid(spec) == os.getpid()
    assert spec.pid_file.exists()


def test_a_pid_now_running_something_else_is_stale(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = _spec(tmp_path)
    spec.pid_file.write_text(f"{os.getpid()}\n-Dour.config=/stack\n")
    monkeypatch.setattr(process, "_cmdline", lambda pid: "/usr/bin/vim notes.txt")
    assert process.read_pid(spec) is None
    assert not spec.pid_file.exists()


def test_pid_files_are_replaced_whole(tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    process._write_pid_file(spec.pid_file, 1234, "marker")
    assert spec.pid_file.read_text() == "1234\nmarker\n"
    assert list(tmp_path.iterdir()) == [spec.pid_file]
