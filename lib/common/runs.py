"""Run folders, shared by both model families (docs/ARCHITECTURE.md, "Run folders"):

    <parent>/<run_id>/
        config.json     the resolved config          command.txt   the command line
        run_info.json   status (running | interrupted | completed), started_at, resumed, git commit,
                        package versions, device line, and what the trainer adds
        metrics.json    written when the run completes
    <parent>/latest     the run_id of the last COMPLETED run (moved only after it completes)

One lifecycle: `check_existing_run` (refuse or resume), `start_run_folder`, then `mark_interrupted` or
`mark_completed`. `StopOnSignal` turns SIGTERM (SLURM preemption) and Ctrl-C into "checkpoint, then stop".

Nothing is written into, or removed from, a folder that is not provably a run of ours: a run starts only
in a new or empty folder or in one whose run_info.json we wrote (`is_run_folder`), and a trainer replaces
a sub-folder (`model/`, a checkpoint) only through `replace_in_run`, which checks that again. (The run id
itself is a plain name, never a path: schemas/shared/run_id.json.)
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from lib.common.atomic import atomic_dir, write_json_atomic, write_text_atomic
from lib.common.config import ROOT
from lib.common.errors import UsageError

log = logging.getLogger(__name__)

PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "numpy", "unsloth", "vllm")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"


def now() -> str:
    return time.strftime(TIME_FORMAT)


def new_run_id() -> str:
    """A time-stamp run_id (YYYYmmdd-HHMMSS)."""
    return time.strftime("%Y%m%d-%H%M%S")


def git_commit() -> str:
    """The commit this code runs from, with '+dirty' when the work tree has changes; 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout
        return commit + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Python's version and each installed package's (missing ones are left out)."""
    versions = {"python": sys.version.split()[0]}
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[name] = importlib.metadata.version(name)
    return versions


def read_run_info(
    run_dir: Path,
    kind: str = "training run",
    fix: str = "pass a folder under models/<scope>/<stage>/ written by main_trainer.py.",
) -> dict:
    """run_info.json of a run folder, with a clear error when it is not one."""
    try:
        info = json.loads((Path(run_dir) / "run_info.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict):
        raise UsageError(f"{run_dir} is not a {kind} (run_info.json missing or unreadable).", fix=fix)
    return info


# What start_run_folder writes into every run_info.json: a file with all of them is one of ours.
RUN_INFO_FIELDS = ("run_id", "status", "started_at")


def is_run_folder(run_dir: Path) -> bool:
    """True when run_dir holds a run_info.json that start_run_folder wrote (a JSON object with RUN_INFO_FIELDS)."""
    try:
        info = json.loads((Path(run_dir) / "run_info.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(info, dict) and all(field in info for field in RUN_INFO_FIELDS)


def refuse_foreign_folder(run_dir: Path, kind: str = "training run") -> None:
    """UsageError when run_dir exists and is neither empty nor a run folder of ours: a run there could
    overwrite or remove someone's files (a `model/` folder is replaced when a run completes)."""
    run_dir = Path(run_dir)
    if not (run_dir.exists() or run_dir.is_symlink()) or is_run_folder(run_dir):
        return
    if run_dir.is_dir() and not run_dir.is_symlink() and not any(run_dir.iterdir()):
        return  # an empty folder: nothing to lose
    raise UsageError(
        f"{run_dir} already exists and is not a {kind} folder (it has no run_info.json written by this "
        "project), so a run there could overwrite or remove its files; nothing was changed.",
        fix="pass another run_id (or output folder), or move that folder away first.",
    )


@contextlib.contextmanager
def replace_in_run(run_dir: Path, name: str) -> Iterator[Path]:
    """lib.common.atomic.atomic_dir for `run_dir/name` (`model`, `checkpoints/checkpoint-10`), refused unless
    run_dir is a run folder of ours: the folder it replaces is then one our run wrote."""
    if not is_run_folder(run_dir):
        raise UsageError(
            f"refusing to replace {Path(run_dir) / name}: {run_dir} is not a run folder of ours (no "
            "run_info.json written by this project).",
            fix="start the run again with a new run_id.",
        )
    with atomic_dir(Path(run_dir) / name) as tmp:
        yield tmp


def newest_run(directory: Path) -> str:
    """The run_id of the run whose run_info.json changed last (what --resume continues without a run_id)."""
    runs = sorted(
        (p for p in Path(directory).glob("*") if (p / "run_info.json").is_file()),
        key=lambda p: (p / "run_info.json").stat().st_mtime,
    )
    if not runs:
        raise UsageError(
            f"--resume: no run to resume in {directory}.", fix="start a new run without --resume."
        )
    return runs[-1].name


def latest_run(directory: Path) -> Path | None:
    """The run that `<directory>/latest` names (the last completed run), or None."""
    pointer = Path(directory) / "latest"
    if not pointer.is_file():
        return None
    run = Path(directory) / pointer.read_text().strip()
    return run if (run / "run_info.json").is_file() else None


def check_existing_run(run_dir: Path, resume: bool, kind: str = "training run") -> str | None:
    """None for a new run; the status of the run already in run_dir when resuming; UsageError otherwise
    (also for an existing folder that is not a run of ours: refuse_foreign_folder)."""
    refuse_foreign_folder(run_dir, kind)
    if not (run_dir / "run_info.json").is_file():
        return None
    status = read_run_info(run_dir, kind).get("status")
    if not resume:
        raise UsageError(
            f"run {run_dir} already exists ({status}).",
            fix="pass --resume to continue it, or another run_id.",
        )
    return status


def start_run_folder(run_dir: Path, cfg: dict, argv: Sequence[str], fields: dict) -> dict:
    """Create (or reopen, when resuming) run_dir: run_info.json 'running' (first, so the folder is known to
    be ours from then on), config.json and command.txt. A folder that is not ours is refused."""
    refuse_foreign_folder(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = read_run_info(run_dir) if (run_dir / "run_info.json").is_file() else {}
    info = {
        "run_id": run_dir.name,
        "status": "running",
        "started_at": previous.get("started_at", now()),
        "resumed": previous.get("resumed", 0) + (1 if previous else 0),
        "git_commit": git_commit(),
        "packages": package_versions(),
        **fields,
    }
    write_json_atomic(run_dir / "run_info.json", info)
    write_json_atomic(run_dir / "config.json", cfg)
    write_text_atomic(run_dir / "command.txt", " ".join(argv) + "\n")
    return info


def mark_interrupted(run_dir: Path, stopped_by: str, step: int) -> None:
    info = read_run_info(run_dir)
    info.update(status="interrupted", stopped_by=stopped_by, step=step)
    write_json_atomic(run_dir / "run_info.json", info)


def mark_completed(run_dir: Path, step: int, metrics: dict) -> None:
    """metrics.json, run_info.json 'completed', then `latest` (only now, so `latest` is always complete)."""
    write_json_atomic(run_dir / "metrics.json", metrics)
    info = read_run_info(run_dir)
    info.update(status="completed", finished_at=now(), step=step)
    write_json_atomic(run_dir / "run_info.json", info)
    write_text_atomic(run_dir.parent / "latest", run_dir.name + "\n")
    log.info("%s/latest -> %s", run_dir.parent, run_dir.name)


def mean_of_last(history: list[dict], key: str, count: int = 5) -> float | None:
    """The mean of the last `count` values of key in a log history (None when never logged)."""
    values = [h[key] for h in history if key in h]
    return sum(values[-count:]) / len(values[-count:]) if values else None


class StopOnSignal:
    """SIGTERM (SLURM preemption) or Ctrl-C: `signal_name` is set, and the training loop saves a checkpoint
    at the end of its current step and stops. A second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __enter__(self) -> StopOnSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)

    def _handle(self, signum, frame) -> None:
        if self.signal_name:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name
        log.warning(
            "%s received: saving a checkpoint at the end of this step, then stopping", self.signal_name
        )


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ru_maxrss is bytes on macOS and kilobytes on Linux."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024
