"""Writing files and folders so that they are never seen half-written: build under a temporary name in the
same folder, then rename (os.replace is atomic within a file system). Every writer of the project uses these;
see docs/ARCHITECTURE.md, "Files on disk"."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from lib.common.errors import LEFTOVER, UsageError


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    """path gets data whole or not at all; fsync=True also flushes it to the disk before the rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """path gets text (UTF-8) whole or not at all."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, data: object, allow_nan: bool = True) -> None:
    """data as indented JSON, written atomically. allow_nan=False raises ValueError on NaN/inf before any
    byte is written (for files other tools parse strictly)."""
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=allow_nan) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `final`; when the block ends without an error it becomes
    `final` (a folder already there is moved aside first, then removed), otherwise it is removed.

        with atomic_dir(run_dir / "model") as tmp:
            model.save_pretrained(tmp)
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            try:
                os.replace(tmp, final)
            except BaseException:
                os.replace(old, final)  # the previous version stays rather than none
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove the temporary files and folders of writes that never finished in `folder` (a process killed
    with kill -9 cannot clean up); the removed paths. Call it only where no other process writes now (a run
    folder whose lock we hold): a live writer's temporary name looks the same."""
    removed = []
    folder = Path(folder)
    for path in folder.iterdir() if folder.is_dir() else ():
        if LEFTOVER.match(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write a matplotlib figure to path atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path


def check_writable_folder(folder: Path, flag: str, fix: str) -> None:
    """Refuse, before any work, a folder (named `flag` in the message) that is a file, lies below a file, or
    cannot take new files (tried for real: a probe file is created and removed). Creates nothing else."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{flag} {folder} is a file, not a folder.", fix=fix)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"{flag} {folder} cannot be created: {existing} is a file.", fix=fix)
    try:
        handle, probe = tempfile.mkstemp(prefix=".write_probe.", dir=existing)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(
            f"{flag} {folder} is not writable: {existing} refuses new files ({exc.strerror or exc}).", fix=fix
        ) from None
