"""Run folders (lib/common/runs.py): one trainer per run (the lock), `latest` only when it is ours, 'failed'
with a reason, and atomic writers that leave nothing behind on a full disk (a real tmpfs, tests/small_disk.py)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from small_disk import fill, small_disk

from lib.common.atomic import atomic_dir, remove_leftovers, write_json_atomic, write_text_atomic
from lib.common.errors import UsageError, describe_failure
from lib.common.runs import (
    is_latest_pointer,
    lock_path,
    mark_completed,
    mark_failed,
    refuse_foreign_latest,
    release_run_lock,
    run_lock,
    start_run_folder,
    take_run_lock,
)


def a_run(parent: Path, run_id: str) -> Path:
    run_dir = parent / run_id
    start_run_folder(run_dir, {"seed": 1}, ["train"], {})
    return run_dir


# ---------------------------------------------------------------- the lock


def test_a_held_lock_refuses_a_second_trainer_and_is_released_at_the_end(tmp_path):
    run_dir = tmp_path / "sft" / "dup"
    with run_lock(run_dir):
        owner = json.loads(lock_path(run_dir).read_text())
        assert (owner["host"], owner["pid"]) == (socket.gethostname(), os.getpid())
        with pytest.raises(UsageError, match=f"pid {os.getpid()} on host {socket.gethostname()}") as info:
            take_run_lock(run_dir)
        assert "--resume" in info.value.fix and str(lock_path(run_dir)) in info.value.fix
    assert not lock_path(run_dir).exists()
    with pytest.raises(RuntimeError), run_lock(run_dir):  # released when the run ends by an exception too
        raise RuntimeError("the run failed")
    assert not lock_path(run_dir).exists()
    assert not run_dir.exists()  # the lock lies beside the run folder: a new folder stays empty


def test_a_stale_lock_is_taken_over_and_another_hosts_lock_is_not(tmp_path, caplog):
    run_dir = tmp_path / "sft" / "k1"
    run_dir.parent.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a trainer killed with kill -9 leaves its lock behind, naming a pid that is gone
    stale = {"host": socket.gethostname(), "pid": dead.pid, "started_at": "2026-01-01T00:00:00+0000"}
    lock_path(run_dir).write_text(json.dumps(stale))
    take_run_lock(run_dir)
    assert json.loads(lock_path(run_dir).read_text())["pid"] == os.getpid()
    assert f"from pid {dead.pid}" in caplog.text
    assert [p.name for p in run_dir.parent.iterdir()] == [lock_path(run_dir).name]  # nothing set aside left
    release_run_lock(run_dir)
    elsewhere = {**stale, "host": "node-17"}  # its pid cannot be checked from here: never taken over
    lock_path(run_dir).write_text(json.dumps(elsewhere))
    with pytest.raises(UsageError, match="on host node-17") as info:
        take_run_lock(run_dir)
    assert f"delete {lock_path(run_dir)}" in info.value.fix
    release_run_lock(run_dir)  # not ours: left alone
    assert json.loads(lock_path(run_dir).read_text()) == elsewhere


def test_a_requeued_slurm_job_takes_over_its_earlier_runs_lock(tmp_path, monkeypatch):
    """A job requeued after its node died runs on another host with the same SLURM_JOB_ID and a higher
    SLURM_RESTART_COUNT: its earlier incarnation's lock is stale; another job's lock is not."""
    run_dir = tmp_path / "sft" / "s1"
    run_dir.parent.mkdir(parents=True)
    before = {
        "host": "node-3",
        "pid": 4242,
        "started_at": "x",
        "slurm_job_id": "77",
        "slurm_restart_count": 0,
    }
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock_path(run_dir).write_text(json.dumps(before))
    take_run_lock(run_dir)
    assert json.loads(lock_path(run_dir).read_text())["slurm_restart_count"] == 1
    release_run_lock(run_dir)
    lock_path(run_dir).write_text(json.dumps({**before, "slurm_job_id": "78"}))
    with pytest.raises(UsageError, match="on host node-3"):
        take_run_lock(run_dir)


# ---------------------------------------------------------------- latest


def test_latest_is_replaced_only_when_it_is_our_pointer(tmp_path, caplog):
    parent = tmp_path / "sft"
    first, second = a_run(parent, "r1"), a_run(parent, "r2")
    mark_completed(first, 2, {})
    assert is_latest_pointer(parent / "latest") and (parent / "latest").read_text() == "r1\n"
    mark_completed(second, 2, {})
    assert (parent / "latest").read_text() == "r2\n"

    (parent / "latest").write_text("my notes about the runs\nsecond line\n")  # a user's own file
    with pytest.raises(UsageError, match="did not write") as info:
        refuse_foreign_latest(parent)  # at start: refused before any work (exit 2)
    assert "move, rename or delete" in info.value.fix
    mark_completed(first, 2, {})  # at the end: the run completes and the user's file stays
    assert (parent / "latest").read_text() == "my notes about the runs\nsecond line\n"
    assert json.loads((first / "run_info.json").read_text())["status"] == "completed"
    assert "left as it is" in caplog.text

    (parent / "latest").unlink()
    (parent / "latest").mkdir()  # a folder named latest
    with pytest.raises(UsageError, match="is a folder"):
        refuse_foreign_latest(parent)
    mark_completed(second, 2, {})  # no IsADirectoryError after the run completed
    assert (parent / "latest").is_dir()
    (parent / "latest").rmdir()
    for text in ("r9\n", "../r1\n", "r1\nr2\n", ""):  # no such run, a path, two lines, empty
        (parent / "latest").write_text(text)
        assert not is_latest_pointer(parent / "latest"), text
    (parent / "latest").unlink()
    (parent / "latest").symlink_to(parent / "r1" / "command.txt")  # a link is someone's, whatever it names
    assert not is_latest_pointer(parent / "latest")


# ---------------------------------------------------------------- failed, and full disks


def test_mark_failed_records_the_reason_and_never_masks_the_error(tmp_path, caplog):
    run_dir = a_run(tmp_path, "f1")
    mark_failed(run_dir, ValueError("a bug in step 3\nmore detail"))
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["status"], info["reason"]) == ("failed", "ValueError: a bug in step 3")
    full = OSError(errno.ENOSPC, "No space left on device", str(run_dir / "x"))
    mark_failed(run_dir, full)
    assert json.loads((run_dir / "run_info.json").read_text())["reason"] == describe_failure(full).message
    mark_failed(tmp_path / "not-a-run", RuntimeError("boom"))  # cannot write: logged, nothing raised
    assert "could not mark" in caplog.text and "boom" in caplog.text


def test_atomic_writers_leave_nothing_on_a_full_disk_and_a_run_is_marked_failed(tmp_path):
    """A real 1 MB tmpfs: every writer fails with ENOSPC, the file it replaces stays whole, no temporary
    file or folder is left, and mark_failed's own write failing does not raise."""
    with small_disk(tmp_path / "disk", "1m") as disk:
        run_dir = a_run(disk, "full")
        write_text_atomic(disk / "kept.txt", "the old version\n")
        (disk / "model").mkdir()
        (disk / "model" / "weights").write_text("old weights")
        ballast = fill(disk)
        before = sorted(p.name for p in disk.rglob("*"))
        with pytest.raises(OSError) as info:
            write_text_atomic(disk / "kept.txt", "x" * 100_000)
        assert info.value.errno == errno.ENOSPC and describe_failure(info.value).kind == "disk-full"
        with pytest.raises(OSError):
            write_json_atomic(disk / "new.json", {"data": "y" * 100_000})
        with pytest.raises(OSError), atomic_dir(disk / "model") as tmp:
            (tmp / "weights").write_text("z" * 100_000)
        assert sorted(p.name for p in disk.rglob("*")) == before  # no .tmp / .partial debris
        assert (disk / "kept.txt").read_text() == "the old version\n"
        assert (disk / "model" / "weights").read_text() == "old weights"
        mark_failed(run_dir, info.value)  # run_info.json cannot be rewritten now: logged, not raised
        assert json.loads((run_dir / "run_info.json").read_text())["status"] == "running"
        ballast.unlink()  # space freed: the same call now records the failure
        mark_failed(run_dir, info.value)
        info_now = json.loads((run_dir / "run_info.json").read_text())
        assert info_now["status"] == "failed" and "disk is full" in info_now["reason"]


def test_leftovers_of_a_killed_writer_are_removed_when_the_run_starts_again(tmp_path):
    run_dir = a_run(tmp_path, "k9")
    (run_dir / "checkpoints" / ".checkpoint-4.4242.partial").mkdir(parents=True)  # kill -9 in atomic_dir
    (run_dir / ".run_info.json.4242.tmp").write_text("{")
    (run_dir / "notes.lock").write_text("not ours to judge")
    start_run_folder(run_dir, {"seed": 1}, ["train", "--resume"], {})
    assert sorted(p.name for p in run_dir.rglob("*")) == sorted(
        ["checkpoints", "command.txt", "config.json", "notes.lock", "run_info.json"]
    )
    assert remove_leftovers(tmp_path / "missing") == []
