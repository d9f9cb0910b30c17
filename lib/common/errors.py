"""Exit codes, and the one place that turns known failures into a message and a fix (docs/ARCHITECTURE.md, "Errors and exit codes").

Every script ends with `sys.exit(run_cli(main))`: bad usage, config or input exits 2 with a paragraph
that names what is wrong and how to fix it (no traceback); a known run-time failure (out of memory, ...)
exits with its code and a one-line fix; an unknown exception is a bug and keeps its traceback (exit 1).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# the temporary names lib/common/atomic.py writes under: .<name>.<pid>.tmp (or .tmp<suffix>), .<name>.<pid>.partial
# and .<name>.<pid>.old (here, not there, so an error message can name the final path without an import cycle)
LEFTOVER = re.compile(r"^\.(.+)\.\d+\.(tmp|partial|old)(\.[^.]+)?$")


def final_path(path: Path | str) -> Path:
    """The path a temporary name stands for, part by part (.d.12.partial/.info.json.12.tmp -> d/info.json):
    what an error message should name."""
    parts = [
        match.group(1) + (match.group(3) or "") if (match := LEFTOVER.match(part)) else part
        for part in Path(path).parts
    ]
    return Path(*parts)


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

OPTIONAL_BACKENDS = ("unsloth", "vllm", "deepspeed", "flash_attn", "bitsandbytes")


class UsageError(Exception):
    """Bad usage, config or input. The message names what is wrong; `fix` says what to do."""

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.fix = fix


class ConfigError(UsageError):
    """A config file or override that cannot be loaded or does not match its schema."""


@dataclass(frozen=True)
class Failure:
    kind: str
    exit_code: int
    message: str
    fix: str


def _text(exc: BaseException) -> str:
    return str(exc).lower()


def _is_out_of_memory(exc: BaseException) -> bool:
    # torch.OutOfMemoryError / torch.cuda.OutOfMemoryError without importing torch here; on the CPU torch
    # raises a plain RuntimeError "[enforce fail at alloc_cpu.cpp] ... DefaultCPUAllocator: can't allocate
    # memory: you tried to allocate N bytes", and Python itself MemoryError
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = _text(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_TEXT = ("no space left on device", "disk quota exceeded")
# torch.save gives no reason when a write fails mid-file (the stream error hides errno): "[enforce fail at
# inline_container.cc] . unexpected pos 576 vs 534" or "PytorchStreamWriter failed writing file ..."; a file
# that opened fine and then cannot grow is, in practice, a full disk or quota
TORCH_WRITE_FAILED = ("unexpected pos", "failed writing file", "file write failed")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """exc, then its causes and contexts (libraries re-raise an OS error as their own)."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _disk_full(exc: BaseException) -> BaseException | None:
    """The OSError ENOSPC / EDQUOT behind exc (itself or a cause or context), or the error whose text says
    so (safetensors reports the OS error only in its message; torch.save not even that:
    TORCH_WRITE_FAILED); None when the disk is not full."""
    for seen in _chain(exc):
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            return seen
    for seen in _chain(exc):
        text = _text(seen)
        if any(words in text for words in DISK_FULL_TEXT):
            return seen
        if "inline_container" in text and any(words in text for words in TORCH_WRITE_FAILED):
            return seen
    return None


def name_the_folder(exc: BaseException, folder: os.PathLike | str) -> BaseException:
    """exc, or, for a full disk whose error names no file (safetensors, torch.save), an OSError ENOSPC
    naming `folder` (what the job was writing into), so the message says where; raise it `from exc`."""
    full = _disk_full(exc)
    if full is None or getattr(full, "filename", None):
        return exc
    quota = "quota" in _text(full)
    code = errno.EDQUOT if quota else errno.ENOSPC
    return OSError(code, os.strerror(code), os.fspath(folder))


def _free_space(path: str | None) -> str:
    """' (N MB and room for M more files free there now)' for path's nearest existing folder, '' when it
    cannot be told."""
    if not path:
        return ""
    folder = os.path.abspath(path)
    while not os.path.isdir(folder) and os.path.dirname(folder) != folder:
        folder = os.path.dirname(folder)
    try:
        disk = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return ""
    free = f"{disk.f_bavail * disk.f_frsize / 2**20:.1f} MB"
    if disk.f_files:  # a disk can also run out of inodes (file entries) with bytes to spare
        free += f" and room for {disk.f_favail} more files"
    return f" ({free} free there now)"


def _disk_full_failure(cause: BaseException) -> Failure:

    path = getattr(cause, "filename", None)
    where = f"writing {final_path(path)}" if path else "writing to disk"
    quota = (isinstance(cause, OSError) and cause.errno == errno.EDQUOT) or "quota" in _text(cause)
    full = "the disk quota is used up" if quota else "the disk is full"
    return Failure(
        "disk-full",
        EXIT_FAILED,
        f"{full} while {where}{_free_space(path)}. Nothing half-written was kept: every file is written "
        "under a temporary name and renamed only when whole, and a temporary file of a failed write is "
        "removed; a training run keeps its last complete checkpoint and run_info.json says 'failed'.",
        "free space on that disk (`make clean-cache DRY=1` lists caches that can go, old runs under models/ "
        "and checkpoints take the most), or point the output to another disk (run.models_dir, output_dir, "
        "--output-dir); then run the same command again, with --resume for a training run.",
    )


def _is_mps_watermark(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and "watermark ratio" in _text(exc)


def _is_cuda_unavailable(exc: BaseException) -> bool:
    text = _text(exc)
    return isinstance(exc, (RuntimeError, AssertionError)) and (
        "torch not compiled with cuda" in text
        or "no cuda gpus are available" in text
        or "found no nvidia driver" in text
    )


def _missing_backend(exc: BaseException) -> str | None:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        root = exc.name.split(".")[0]
        if root in OPTIONAL_BACKENDS:
            return root
    return None


def describe_failure(exc: BaseException) -> Failure | None:
    """Map a known failure to its exit code and fix; None for anything else (a bug: keep the traceback)."""
    if isinstance(exc, UsageError):
        return Failure("usage", EXIT_USAGE, str(exc), exc.fix)
    if _is_mps_watermark(exc):
        return Failure(
            "mps-watermark",
            EXIT_USAGE,
            f"PyTorch rejected the MPS memory watermarks: {exc}. PyTorch needs "
            "0 <= PYTORCH_MPS_LOW_WATERMARK_RATIO <= PYTORCH_MPS_HIGH_WATERMARK_RATIO <= 2; setting only the "
            "high one below the default low one (1.4) causes 'invalid low watermark ratio'.",
            "unset both variables in your shell and set device.mps_high_watermark_ratio / "
            "device.mps_low_watermark_ratio in the config (defaults 0.8 / 0.0); lib.common.device sets both.",
        )
    if _is_out_of_memory(exc):
        return Failure(
            "out-of-memory",
            EXIT_FAILED,
            f"ran out of memory: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
            "lower the batch size or max sequence length (the byte-level model: batch_size or block_size; "
            "raise gradient_accumulation_steps to keep the effective batch), use LoRA instead of full "
            "fine-tuning, or on MPS lower device.mps_high_watermark_ratio; then resume with --resume.",
        )
    full = _disk_full(exc)
    if full is not None:
        return _disk_full_failure(full)
    backend = _missing_backend(exc)
    if backend:
        return Failure(
            "missing-backend",
            EXIT_USAGE,
            f"the optional back-end '{backend}' is not installed.",
            "on a CUDA machine run `make install-cuda`; elsewhere set device.unsloth=off and "
            "device.vllm=off (or leave them on auto) to use the plain transformers + TRL path.",
        )
    if _is_cuda_unavailable(exc):
        return Failure(
            "cuda-unavailable",
            EXIT_USAGE,
            f"CUDA is not available here: {exc}",
            "run on a GPU node, or set device.type=auto (or cpu) so lib.common.device picks what this machine has.",
        )
    if isinstance(exc, FileNotFoundError):
        missing = exc.filename or str(exc)
        return Failure(
            "missing-file",
            EXIT_USAGE,
            f"file or folder not found: {missing}",
            "check the path (relative paths are taken from the repository root); datasets are made by "
            "`make data` and models by the training scripts.",
        )
    return None


def report_failure(failure: Failure) -> None:
    print(f"error: {failure.message}", file=sys.stderr)
    if failure.fix:
        print(f"fix: {failure.fix}", file=sys.stderr)


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int = logging.INFO) -> None:
    """The one logging set-up of every entry point: INFO and above to stderr, with time and module.
    A no-op when logging is already configured (by pytest, or a caller's own set-up)."""
    logging.basicConfig(level=level, format=LOG_FORMAT, datefmt="%H:%M:%S", stream=sys.stderr)


class ConsoleStream:
    """sys.stdout / sys.stderr for a job whose reader may go away (`... | head`, a closed terminal, a dead
    log collector): once a write fails with a broken pipe, output is dropped and the job goes on, so a
    training run still checkpoints and completes instead of dying mid-step."""

    def __init__(self, stream):
        self._stream = stream
        self.lost = False

    def _lose(self) -> None:
        self.lost = True
        with contextlib.suppress(OSError, ValueError, AttributeError):  # buffered bytes go nowhere, quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), self._stream.fileno())

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._lose()
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._lose()

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


@contextlib.contextmanager
def console_that_may_close() -> Iterator[None]:
    """Wrap sys.stdout and sys.stderr in ConsoleStream for the duration of the block."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = ConsoleStream(sys.stdout), ConsoleStream(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's main(argv) with logging configured, and turn what it raises into an exit code
    (docs/ARCHITECTURE.md, "Errors and exit codes"). A reader that goes away stops the output, never the job."""
    with console_that_may_close():
        configure_logging()
        return _run_main(main, argv)


def _run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (`... | head`): not an error of ours
        with contextlib.suppress(OSError, ValueError):  # silence the interpreter's final flush of stdout
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        failure = describe_failure(exc)
        if failure is None:
            raise
        report_failure(failure)
        return failure.exit_code
