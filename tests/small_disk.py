"""A real tiny disk for the full-disk tests: a tmpfs of a given size mounted on a folder (as root, or where
the kernel lets this user mount). Tests that need one skip where mounting is not permitted."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "2m", inodes: int | None = None) -> Iterator[Path]:
    """`folder` as a tmpfs of `size` (mount's syntax: 2m, 512k) and at most `inodes` files and folders, for
    the block; pytest.skip when it cannot be mounted here."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        mounted = subprocess.run(
            [
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={size}" + (f",nr_inodes={inodes}" if inodes else ""),
                "tmpfs",
                str(folder),
            ],
            capture_output=True,
            text=True,
        )
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs here: {exc}")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the disk under folder with one file (`ballast`, returned), leaving `leave` bytes free."""
    ballast = Path(folder) / "ballast"
    handle = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 4096, 1):  # smaller and smaller until not even one byte fits
            with contextlib.suppress(OSError):
                while True:
                    os.write(handle, b"\0" * chunk)
    finally:
        os.close(handle)
    if leave:
        os.truncate(ballast, max(ballast.stat().st_size - leave, 0))
    return ballast


def grow(folder: Path, size: str, inodes: int) -> None:
    """Give the mounted tmpfs more room (space freed), keeping what is on it."""
    subprocess.run(["mount", "-o", f"remount,size={size},nr_inodes={inodes}", str(folder)], check=True)


def run_until_disk_fills(args: list[str], cwd: Path, run_dir: Path, disk: Path) -> tuple[int, str, Path]:
    """Start a trainer (`args`), wait for its run folder to be written, hold it (SIGSTOP) while the disk is
    filled but for 16 kB, let it go on and wait for it: (exit code, stderr, the ballast file to remove)."""
    from helpers import HANG_GUARD_S

    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while not (run_dir / "command.txt").exists():  # the run has started: its folder is written
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGSTOP)  # hold it while the disk fills, so it cannot save first
    ballast = fill(disk, leave=16 * 1024)
    process.send_signal(signal.SIGCONT)
    _, stderr = process.communicate(timeout=HANG_GUARD_S)
    return process.returncode, stderr, ballast
