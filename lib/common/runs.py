"""Run folders, shared by both model families (docs/ARCHITECTURE.md, "Run folders"):

    <parent>/<run_id>/
        config.json     the resolved config          command.txt   the command line
        run_info.json   status (running | interrupted | failed | completed), started_at, resumed, git
                        commit, package versions, device line, and what the trainer adds; `reason` when failed
        metrics.json    written when the run completes
    <parent>/latest     the run_id of the last COMPLETED run (moved only after it completes)
    <parent>/.<run_id>.lock   while a trainer works on the run: its host, pid and start time (`run_lock`)

One lifecycle: `run_lock` (one trainer per run), `check_existing_run` (refuse or resume; also refuses a
`latest` that is not ours), `start_run_folder`, then `mark_interrupted`, `mark_failed` or `mark_completed`.
`StopOnSignal` turns SIGTERM (SLURM preemption) and Ctrl-C into "checkpoint, then stop".

`latest` is ours when it is a plain file (not a link) holding one line, a run_id whose folder beside it is
a run folder of ours (`is_latest_pointer`). Only such a file is replaced; anything else there (a user's
file, a folder, a link) is refused when a run starts and left alone, with a warning, when a run completes.

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
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from lib.common.atomic import atomic_dir, remove_leftovers, write_json_atomic, write_text_atomic
from lib.common.config import ROOT
from lib.common.distributed import Processes
from lib.common.errors import UsageError, describe_failure

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


LATEST_MAX_BYTES = 256  # a run_id and a newline; a bigger file is someone's own


def is_latest_pointer(pointer: Path) -> bool:
    """True when `pointer` is a `latest` we wrote: a plain file of one line naming a run folder of ours
    beside it (a run_id is a plain name, never a path)."""
    pointer = Path(pointer)
    if pointer.is_symlink() or not pointer.is_file() or pointer.stat().st_size > LATEST_MAX_BYTES:
        return False
    try:
        lines = pointer.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return False
    if len(lines) != 1 or not lines[0] or Path(lines[0]).name != lines[0] or lines[0] in (".", ".."):
        return False
    return is_run_folder(pointer.parent / lines[0])


def refuse_foreign_latest(parent: Path) -> None:
    """UsageError before any work when `<parent>/latest` exists and is not our pointer: a completed run
    would have to leave it stale (it is never overwritten), so say so now rather than after training."""
    pointer = Path(parent) / "latest"
    if not (pointer.exists() or pointer.is_symlink()) or is_latest_pointer(pointer):
        return
    what = "a folder" if pointer.is_dir() and not pointer.is_symlink() else "a file or link"
    raise UsageError(
        f"{pointer} is {what} that this project did not write, or one naming a run folder that is gone (its "
        "`latest` is one line naming a run folder beside it); a completed run would not move it, so nothing "
        "was started.",
        fix=f"move, rename or delete {pointer} (the trainers write it), or set another output folder.",
    )


def check_existing_run(run_dir: Path, resume: bool, kind: str = "training run") -> str | None:
    """None for a new run; the status of the run already in run_dir when resuming; UsageError otherwise
    (also for an existing folder that is not a run of ours, refuse_foreign_folder, and for a `latest`
    beside it that is not ours, refuse_foreign_latest)."""
    refuse_foreign_folder(run_dir, kind)
    refuse_foreign_latest(run_dir.parent)
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
    be ours from then on), config.json and command.txt; the temporary files of writes a killed run never
    finished are removed (the caller holds run_lock). A folder that is not ours is refused."""
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
    for folder in (run_dir, run_dir / "checkpoints"):  # ours now, and its lock is held: no writer is live
        for path in remove_leftovers(folder):
            log.info("removed %s, left by a write that never finished", path)
    return info


def mark_interrupted(run_dir: Path, stopped_by: str, step: int) -> None:
    info = read_run_info(run_dir)
    info.update(status="interrupted", stopped_by=stopped_by, step=step)
    write_json_atomic(run_dir / "run_info.json", info)


def mark_failed(run_dir: Path, exc: BaseException) -> None:
    """run_info.json 'failed' with the reason (the known failure's message, else the exception's first line).
    Never raises: the run is already failing with `exc`, which must reach the user unmasked, and writing
    may fail for the same reason (a full disk); then it is only logged."""
    failure = describe_failure(exc)
    first_line = (str(exc).splitlines() or [""])[0]
    reason = failure.message if failure else f"{type(exc).__name__}: {first_line}".rstrip(": ")
    try:
        info = read_run_info(run_dir)
        info.update(status="failed", reason=reason, finished_at=now())
        write_json_atomic(run_dir / "run_info.json", info)
    except (OSError, UsageError) as error:
        log.warning("could not mark %s failed (%s); the run failed with: %s", run_dir, error, reason)


def mark_completed(run_dir: Path, step: int, metrics: dict) -> None:
    """metrics.json, run_info.json 'completed', then `latest` (only now, so `latest` is always complete).
    A `latest` that is not our pointer (is_latest_pointer) is left alone, with a warning."""
    write_json_atomic(run_dir / "metrics.json", metrics)
    info = read_run_info(run_dir)
    info.update(status="completed", finished_at=now(), step=step)
    write_json_atomic(run_dir / "run_info.json", info)
    pointer = run_dir.parent / "latest"
    if (pointer.exists() or pointer.is_symlink()) and not is_latest_pointer(pointer):
        log.warning(
            "%s is not a `latest` this project wrote: left as it is, so it does not name %s; move it away "
            "to have the next completed run write it",
            pointer,
            run_dir.name,
        )
        return
    write_text_atomic(pointer, run_dir.name + "\n")
    log.info("%s/latest -> %s", run_dir.parent, run_dir.name)


# ---------------------------------------------------------------- one trainer per run
#
# The lock is a file created with O_CREAT | O_EXCL beside the run folder, holding the owner's host, pid and
# start time as JSON, removed when the run ends (normally, by an exception or by a signal). Not fcntl.flock:
# flock is not honoured between hosts on several cluster filesystems (NFS before v4 emulates it per host;
# Lustre and GPFS mounts can disable it, where it fails or silently succeeds), which is exactly where two
# SLURM jobs with one run_id meet. O_EXCL creation is atomic on local filesystems and on NFS v3+, and the
# file says who holds it. The price: kill -9 leaves the file behind; a lock from this host whose pid is
# gone is stale and is taken over with a warning, and so is one of an earlier run of the same SLURM job
# (requeued on another node); any other from another host cannot be checked from here, so the message
# says how to remove it.


def lock_path(run_dir: Path) -> Path:
    """The lock of a run: `<parent>/.<run_id>.lock`, beside the run folder, so that holding it before the
    folder exists leaves nothing in a folder that refuse_foreign_folder would then find not empty."""
    return run_dir.parent / f".{run_dir.name}.lock"


def _read_lock(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}  # being written this instant, or damaged: held by someone unknown
    return owner if isinstance(owner, dict) else {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _slurm_run() -> dict:
    """The SLURM job and its restart count, when running under SLURM (a requeued job keeps its id)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return {}
    return {
        "slurm_job_id": os.environ["SLURM_JOB_ID"],
        "slurm_restart_count": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
    }


def _is_stale(owner: dict) -> bool:
    """A lock whose holder is gone: its pid no longer runs on this host, or it was an earlier incarnation
    of this very SLURM job (requeued, e.g. after its node failed: SLURM never runs two at once)."""
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid):
        return True
    ours = _slurm_run()
    return bool(ours) and (
        owner.get("slurm_job_id") == ours["slurm_job_id"]
        and isinstance(owner.get("slurm_restart_count"), int)
        and owner["slurm_restart_count"] < ours["slurm_restart_count"]
    )


def _held(run_dir: Path, path: Path, owner: dict) -> UsageError:
    who = (
        f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started_at', '?')}"
        if owner
        else "an unknown process (the lock file is unreadable)"
    )
    return UsageError(
        f"run {run_dir} is being trained by another trainer: {who} (lock file {path}).",
        fix="wait for that trainer to end, then continue the run with --resume, or pass another run_id; if "
        f"that process is gone (it ran on another host and was killed), delete {path} and retry.",
    )


def _create_lock(path: Path) -> bool:
    """Create the lock file with our host, pid and time; False when one exists. Not through atomic.py: a
    rename would replace another trainer's lock, only O_EXCL creates exclusively; a reader that meets the
    file before its bytes are written takes it as held by someone unknown (_read_lock)."""
    owner = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": now(), **_slurm_run()}
    try:
        handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(handle, json.dumps(owner).encode())
    except OSError:
        os.close(handle)
        path.unlink(missing_ok=True)
        raise
    os.close(handle)
    return True


def take_run_lock(run_dir: Path) -> Path:
    """Hold the run's lock (lock_path) or raise UsageError naming its holder; a stale one (_is_stale: a
    trainer killed with kill -9 on this host, or an earlier run of this requeued SLURM job) is taken over
    with a warning."""
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    if _create_lock(path):
        return path
    owner = _read_lock(path)
    if owner is None and _create_lock(path):  # released between our two looks
        return path
    if not owner or not _is_stale(owner):
        raise _held(run_dir, path, owner or {})
    # move the stale file aside under a name of our own, then check that it still is the stale one: a
    # second trainer may have taken it over in between, and its fresh lock must go back, not be deleted
    aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
    with contextlib.suppress(FileNotFoundError):
        os.rename(path, aside)
    moved = _read_lock(aside)
    if moved is not None and moved != owner:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        raise _held(run_dir, path, moved)
    aside.unlink(missing_ok=True)
    if not _create_lock(path):
        raise _held(run_dir, path, _read_lock(path) or {})
    log.warning(
        "took over the lock of run %s from pid %s on %s, which is no longer running (killed, or requeued)",
        run_dir,
        owner.get("pid"),
        owner.get("host"),
    )
    return path


def release_run_lock(run_dir: Path) -> None:
    """Remove the run's lock if it is ours (our host and pid)."""
    path = lock_path(run_dir)
    owner = _read_lock(path)
    if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        with contextlib.suppress(OSError):  # the run's own outcome matters more than a leftover lock
            path.unlink()


@contextlib.contextmanager
def run_lock(run_dir: Path, processes: Processes | None = None) -> Iterator[None]:
    """Hold the run's lock for the block, on the main process only; every process raises the same
    UsageError when another trainer holds it (rank 0's verdict, Processes.agree)."""
    processes = processes or Processes()
    refusal = None
    if processes.is_main:
        try:
            take_run_lock(run_dir)
        except UsageError as error:
            refusal = (str(error), error.fix)
    refusal = processes.agree(refusal)
    if refusal:
        raise UsageError(*refusal)
    try:
        yield
    finally:
        if processes.is_main:
            release_run_lock(run_dir)


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
