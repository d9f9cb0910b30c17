"""What `make clean-cache` removes and keeps: caches, temporary training outputs, wandb folders, temporary
files and logs go; everything else stays. The standard library only (and lib/common/errors.py, which is
stdlib too), so `make clean-cache` runs with the system Python before `make install`.

What goes (names are matched exactly, with fnmatch, case-sensitively, never as substrings of a path):
    folders  __pycache__  .pytest_cache  .ruff_cache  .mypy_cache  .hypothesis  .ipynb_checkpoints
             unsloth_compiled_cache  wandb  tmp_trainer (Trainer's default output_dir)
             temp_*_output  sft_pretraining_output  grpo_working_output (the original project's outputs)
    files    *.pyc  *.pyo  *.tmp  *.temp  *.log  (logs/*.log included)
`.hypothesis` is a cache too: it holds Hypothesis's replay database, and a bug it found is found again.

What is never removed:
    folders  models  datasets  results  figures  slurm_logs  .git  .venv, and any virtual environment
             (a folder with a pyvenv.cfg, whatever its name): never entered, so models/x/__pycache__ stays
    files    source, docs and configs (*.py *.md *.yaml *.yml *.json *.jsonl *.toml *.sh *.cfg *.txt ...,
             case-insensitive): never a target by themselves
    anything outside --root, and what a symbolic link points to

Precedence, read from the root down, the first folder that matches decides for everything below it:
a preserved folder is never entered (models/x/__pycache__ stays), and a target folder goes whole with
everything in it (wandb/models/ and wandb/run-1/files/config.yaml go with wandb/: what a tool keeps in its
own cache or temporary output is that tool's, not the project's models or configs). A folder name is
matched only against folders and a file pattern only against files (a folder called x.log stays).
Symbolic links are never followed: a link whose own name is a target is removed as a link (its target
stays), any other link is left alone, and no link is ever entered.

Mounts: nothing that is a mount point (a bind mount included, even of a folder of the same file system) or
lies on another device than the folder it was found in is ever removed or entered. Such a target (wandb/
mounted from elsewhere), or a target folder with one anywhere below it, is refused and reported (exit 1);
any other such folder is kept, never entered. One function (`mount_problem`) decides, for the scan that
both the dry run and the real run list from, and again just before each removal.

Bytes are the apparent sizes (lstat st_size) of the files and links removed, each inode counted once;
folders count 0. A dry run scans the same way and removes nothing. Exit codes: 0 done, 1 something could
not be removed (each listed with the reason), 2 bad --root.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import stat
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lib.common.errors import EXIT_FAILED, EXIT_OK, UsageError

ROOT = Path(__file__).resolve().parents[2]  # lib/common/cleanup.py -> the repository root

TARGET_DIRS = (
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    ".ipynb_checkpoints",
    "unsloth_compiled_cache",
    "wandb",
    "tmp_trainer",
    "temp_*_output",
    "sft_pretraining_output",
    "grpo_working_output",
)
TARGET_FILES = ("*.pyc", "*.pyo", "*.tmp", "*.temp", "*.log")
PRESERVED_DIRS = ("models", "datasets", "results", "figures", "slurm_logs", ".git", ".venv")
PRESERVED_FILES = (
    "*.py",
    "*.pyi",
    "*.md",
    "*.rst",
    "*.txt",
    "*.yaml",
    "*.yml",
    "*.json",
    "*.jsonl",
    "*.toml",
    "*.cfg",
    "*.ini",
    "*.sh",
    "*.ipynb",
    "makefile",
    "dockerfile",
)
ROOT_MARKERS = (".git", "pyproject.toml")


def mount_points() -> frozenset[str]:
    """Every mount point this process sees, from /proc/self/mountinfo (Linux); empty where that table does not
    exist (macOS: the device numbers and os.path.ismount decide alone). Only this table shows a bind mount of
    a folder of the same file system: its st_dev is its parent's, and os.path.ismount misses it."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return frozenset()
    return frozenset(_unescape(line.split(" ")[4]) for line in lines if line.count(" ") >= 4)


def _unescape(field: str) -> str:
    """A mountinfo field: space, tab, newline and backslash are written as octal escapes (\\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mount_problem(
    path: Path, info: os.stat_result, folder_dev: int, mounts: frozenset[str], whole: bool = False
) -> str | None:
    """Why `path` (its lstat `info`) may be neither removed nor entered: it is a mount point or lies on
    another device than the folder it was found in (`folder_dev`), or, to be removed `whole`, it has a mount
    point anywhere below it; None when none of these. The one test of mounts: the scan, and each removal just
    before it, use it."""
    if stat.S_ISLNK(info.st_mode):
        return None  # a link is never entered nor followed, and a mount cannot sit on one
    if info.st_dev != folder_dev:
        return "it is on another file system (a mount): never removed nor entered"
    text = str(path)
    if text in mounts or (not mounts and os.path.ismount(path)):  # without the table, what ismount sees
        return "it is a mount point: never removed nor entered (unmount it first)"
    below = sorted(m for m in mounts if m.startswith(text + "/")) if whole else []
    if below and stat.S_ISDIR(info.st_mode):
        shown = shown_name(f"{path.name}/{below[0][len(text) + 1 :]}")
        return f"{shown} below it is a mount point: never removed nor entered (unmount it first)"
    return None


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def is_target_dir_name(name: str) -> bool:
    return _matches(name, TARGET_DIRS)


def is_target_file_name(name: str) -> bool:
    # preserved kinds win over target patterns, case-insensitively (README.MD is a doc, whatever its case)
    return _matches(name, TARGET_FILES) and not _matches(name.lower(), PRESERVED_FILES)


def is_preserved_dir(path: Path) -> bool:
    """A preserved name, or a virtual environment: an entry pyvenv.cfg that is not a folder (a link counts:
    when unsure, keep)."""
    if path.name in PRESERVED_DIRS:
        return True
    try:
        return not stat.S_ISDIR((path / "pyvenv.cfg").lstat().st_mode)
    except OSError:
        return False


@dataclass
class Item:
    """One thing to remove: a target folder (whole), file or symbolic link, relative to the root."""

    path: Path
    rel: str
    kind: str  # "dir", "file" or "link"
    bytes: int = 0
    files: int = 0
    problem: str = ""  # why it must not be removed (found while measuring it)

    def line(self, verb: str) -> str:
        shown = shown_name(self.rel + ("/" if self.kind == "dir" else ""))
        count = f" ({self.files} files)" if self.kind == "dir" else ""
        return f"{verb:<12}  {self.kind:<4}  {self.bytes:>14,} bytes  {shown}{count}"


def shown_name(rel: str) -> str:
    """A path as printed: as it is, or JSON-quoted ("a\\nb") when it holds a control character, so that
    every listed item is exactly one line and a name cannot pose as two."""
    return json.dumps(rel) if any(ord(c) < 32 or ord(c) == 127 for c in rel) else rel


def removable(path: Path) -> bool:
    """Whether this user may remove entries of the folder `path` (write and search permission on it)."""
    return os.access(path, os.W_OK | os.X_OK)


@dataclass
class Plan:
    root: Path
    mounts: frozenset[str] = frozenset()  # the mount points seen when the scan started
    items: list[Item] = field(default_factory=list)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why), for --verbose
    errors: list[tuple[str, str]] = field(default_factory=list)  # (relative path, what went wrong)

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.items)


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _entries(directory: Path) -> Iterator[os.DirEntry]:
    with os.scandir(directory) as it:
        yield from sorted(it, key=lambda e: e.name)


def _measure(item: Item, seen: set[tuple[int, int]], mounts: frozenset[str]) -> None:
    """Sizes of everything under a target folder, links not followed, each inode once (hard links); a mount
    anywhere below makes it a problem (mount_problem), found before any size is taken."""
    top = item.path.lstat()
    if not stat.S_ISDIR(top.st_mode):  # never list a folder through a link
        raise NotADirectoryError(20, "not a folder", str(item.path))
    stack = [item.path]
    while stack:
        directory = stack.pop()
        entries = list(_entries(directory))
        if entries and not removable(directory):
            item.problem = f"{shown_name(_rel(directory, item.path.parent))}/ is not writable by this user"
            return
        for entry in entries:
            info = entry.stat(follow_symlinks=False)
            problem = mount_problem(Path(entry.path), info, top.st_dev, mounts)
            if problem:
                item.problem = f"{shown_name(_rel(Path(entry.path), item.path.parent))}: {problem}"
                return
            if stat.S_ISDIR(info.st_mode):
                stack.append(Path(entry.path))
                continue
            key = (info.st_dev, info.st_ino)
            if key not in seen:
                seen.add(key)
                item.bytes += info.st_size
            item.files += 1


def plan_cleanup(root: Path) -> Plan:
    """What a cleanup of `root` removes (see the module docstring for the rules); touches nothing."""
    root = root.resolve()
    plan = Plan(root, mount_points())
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        directory = stack.pop()
        try:
            folder_dev = directory.lstat().st_dev
            entries = list(_entries(directory))
        except OSError as exc:
            plan.errors.append((_rel(directory, root) or ".", f"cannot read the folder: {exc.strerror}"))
            continue
        found: list[Item] = []  # this folder's targets
        for entry in entries:
            path = Path(entry.path)
            rel = _rel(path, root)
            if entry.is_symlink():  # never followed; removed as a link only if its own name is a target
                if is_target_dir_name(entry.name) or is_target_file_name(entry.name):
                    info = entry.stat(follow_symlinks=False)
                    seen.add((info.st_dev, info.st_ino))
                    found.append(Item(path, rel, "link", info.st_size))
                continue
            is_dir = entry.is_dir(follow_symlinks=False)
            if is_dir and is_preserved_dir(path):
                plan.kept.append((rel + "/", "preserved: never entered"))
                continue
            target = is_target_dir_name(entry.name) if is_dir else is_target_file_name(entry.name)
            if not (is_dir or target):
                continue  # a file that is not a target is never touched
            try:
                info = entry.stat(follow_symlinks=False)
                mounted = mount_problem(path, info, folder_dev, plan.mounts, whole=target)
            except OSError as exc:
                mounted = f"cannot read it: {exc.strerror}"
            if mounted:  # never removed nor entered: an error when it was to go, else simply kept
                if target:
                    plan.errors.append((rel + ("/" if is_dir else ""), mounted))
                else:
                    plan.kept.append((rel + "/", mounted))
                continue
            if is_dir:
                if target:
                    item = Item(path, rel, "dir")
                    try:
                        _measure(item, seen, plan.mounts)
                    except OSError as exc:
                        item.problem = f"cannot read it: {exc.strerror}"
                    if item.problem:
                        plan.errors.append((rel + "/", item.problem))
                    else:
                        found.append(item)
                else:
                    stack.append(path)
            elif target and entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                key = (info.st_dev, info.st_ino)
                found.append(Item(path, rel, "file", 0 if key in seen else info.st_size))
                seen.add(key)
        if removable(directory):
            plan.items += found
        else:  # the real run could not remove them, so the dry run must not list them as going
            why = f"its folder {shown_name(_rel(directory, root) or '.')}/ is not writable by this user"
            plan.errors += [(i.rel + ("/" if i.kind == "dir" else ""), why) for i in found]
    plan.items.sort(key=lambda item: item.rel)
    return plan


def _inside(path: Path, root: Path) -> bool:
    """Whether `path` itself (not what it may link to) lies inside `root`, whatever links lead to it."""
    parent = Path(os.path.realpath(path.parent))
    return parent == root or root in parent.parents


def _remove(item: Item, root: Path) -> str | None:
    """Remove one item; None when done, else why not. Re-checks what the scan saw, just before acting."""
    if not _inside(item.path, root):
        return f"it is outside {root} (a folder on its way was replaced by a link)"
    try:
        info = item.path.lstat()
    except FileNotFoundError:
        return None  # already gone
    is_link = stat.S_ISLNK(info.st_mode)
    try:  # mounted since the scan? (the mount table read again now)
        mounted = mount_problem(item.path, info, item.path.parent.lstat().st_dev, mount_points(), whole=True)
    except OSError as exc:
        mounted = f"cannot read it: {exc.strerror}"
    if mounted:
        return mounted
    if item.kind == "dir":
        if is_link or not stat.S_ISDIR(info.st_mode):
            return "it changed since the scan (no longer a folder)"
        failures: list[str] = []

        def record(function, path, exc):
            exc = exc[1] if isinstance(exc, tuple) else exc  # onerror passes exc_info, onexc the exception
            failures.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")

        # rmtree unlinks the links it meets without following them (and resists symlink races on Linux)
        if sys.version_info >= (3, 12):
            shutil.rmtree(item.path, onexc=record)
        else:
            shutil.rmtree(item.path, onerror=record)
        return "; ".join(failures[:3]) + (" ..." if len(failures) > 3 else "") if failures else None
    if item.kind == "link" and not is_link:
        return "it changed since the scan (no longer a link)"
    if item.kind == "file" and not stat.S_ISREG(info.st_mode):
        return "it changed since the scan (no longer a plain file)"
    try:
        item.path.unlink()
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def _remaining_bytes(item: Item) -> int:
    """What is left of a folder whose removal failed half-way (so the bytes freed stay exact)."""
    try:
        info = item.path.lstat()
        mounts = mount_points()
        # swapped for a link or a file, or mounted over, since the scan: ours was not touched
        if not stat.S_ISDIR(info.st_mode) or mount_problem(
            item.path, info, item.path.parent.lstat().st_dev, mounts, whole=True
        ):
            return item.bytes
        left = Item(item.path, item.rel, "dir")
        _measure(left, set(), mounts)
    except FileNotFoundError:
        return 0
    except OSError:
        return item.bytes
    return left.bytes


def human(count: int) -> str:
    size = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{count} B"


def check_root(root: Path) -> Path:
    if not root.is_dir():
        raise UsageError(f"--root {root} is not a folder.", fix="pass the repository root (the default).")
    if not any((root / marker).exists() for marker in ROOT_MARKERS):
        raise UsageError(
            f"--root {root} does not look like a repository (no {' or '.join(ROOT_MARKERS)} there); "
            "cleaning an arbitrary folder would delete every *.log and *.tmp below it.",
            fix="pass the root of a checkout of this project (the default is this one).",
        )
    return root.resolve()


@dataclass
class Outcome:
    freed: int = 0  # bytes removed (or that a dry run would remove)
    done: int = 0  # items removed (or listed)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)


def clean(plan: Plan, dry_run: bool = False) -> Outcome:
    """Remove (or, dry, list) every item of the plan, one line each; failures are collected, not raised."""
    outcome = Outcome(failures=list(plan.errors))
    for item in plan.items:
        problem = None if dry_run else _remove(item, plan.root)
        if problem is None:
            print(item.line("would remove" if dry_run else "removed"))
            outcome.freed += item.bytes
            outcome.done += 1
        else:
            outcome.failures.append((item.rel, problem))
            if item.kind == "dir":
                outcome.freed += item.bytes - _remaining_bytes(item)
    return outcome


def clean_cache(argv: Sequence[str] | None = None) -> int:
    """scripts/cleanup_cache.py's command line: parse, scan, remove (or list), report; the exit code."""
    parser = argparse.ArgumentParser(
        prog="cleanup_cache.py",
        description="Remove caches, temporary training outputs, wandb folders, temporary files and logs; keep "
        "everything else.",
        epilog=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--dry-run", action="store_true", help="list what would be removed; remove nothing")
    parser.add_argument("--verbose", "-v", action="store_true", help="also list what was kept, and why")
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository to clean (default: this one)")
    args = parser.parse_args(argv)
    root = check_root(args.root.expanduser())

    plan = plan_cleanup(root)
    print(f"{'dry run: ' if args.dry_run else ''}cleaning {root}")
    if args.verbose:
        for rel, why in plan.kept:
            print(f"{'kept':<12}  {shown_name(rel)}  ({why})")
    outcome = clean(plan, args.dry_run)
    for rel, problem in outcome.failures:
        print(f"error: could not remove {shown_name(rel)}: {problem}", file=sys.stderr)
    verb = "would free" if args.dry_run else "freed"
    failed = f"; {len(outcome.failures)} could not be removed" if outcome.failures else ""
    print(f"{verb} {outcome.freed:,} bytes ({human(outcome.freed)}) in {outcome.done} item(s){failed}")
    if args.dry_run and plan.items:
        print("dry run: nothing was removed; `make clean-cache` removes these")
    return EXIT_FAILED if outcome.failures else EXIT_OK
