"""A real tiny disk for the full-disk tests: a tmpfs of a given size mounted on a folder (as root, or where
the kernel lets this user mount). Tests that need one skip where mounting is not permitted."""

from __future__ import annotations

import contextlib
import os
import subprocess
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
