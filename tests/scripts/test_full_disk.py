"""generate_data.py on a disk that is full (a real tmpfs, tests/small_disk.py): exit 1 with a message that
names the file and the fix, no traceback, nothing half-written left; once there is room, the same command
works. The disk's free bytes are plenty, its inodes are not: generate_data's own check of the free space
before any work (exit 2) passes, and the disk fills while the dataset is written, as when another job
fills a shared disk at the same time."""

from __future__ import annotations

import sys

from helpers import run
from small_disk import grow, small_disk


def test_generate_data_on_a_full_disk_exits_1_with_the_fix_and_leaves_nothing(tmp_path):
    with small_disk(tmp_path / "disk", "8m", inodes=4) as disk:
        args = [sys.executable, "scripts/generate_data.py", "--systems", "double_integrator",
                "--train-samples", "20", "--eval-samples", "2", "--dataset-name", "d", "--output-dir", str(disk)]  # fmt: skip
        full = run(args)
        assert full.returncode == 1, full.stderr[-3000:]
        assert "Traceback" not in full.stderr
        assert f"error: the disk is full while writing {disk / 'd'}/" in full.stderr
        assert "more files free there now" in full.stderr and "fix: free space" in full.stderr
        assert list(disk.iterdir()) == []  # no partial folder, no temporary file
        grow(disk, "8m", inodes=100)  # room again
        again = run(args)
        assert again.returncode == 0, again.stderr[-3000:]
        assert sorted(p.name for p in (disk / "d").iterdir()) == ["eval.jsonl", "info.json", "train.jsonl"]
