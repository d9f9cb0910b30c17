"""Known failures map to an exit code and a one-line fix; unknown ones keep their traceback."""

from __future__ import annotations

import pytest

from lib.common.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    ConfigError,
    UsageError,
    describe_failure,
    run_cli,
)


class OutOfMemoryError(RuntimeError):
    """Same class name as torch.OutOfMemoryError (lib.common.errors matches it by name, without importing torch)."""


@pytest.mark.parametrize(
    ("exc", "kind", "code", "fix_words"),
    [
        (ConfigError("bad key", fix="use seed"), "usage", EXIT_USAGE, "use seed"),
        (
            OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
            "out-of-memory",
            EXIT_FAILED,
            "batch",
        ),
        (
            RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"),
            "out-of-memory",
            EXIT_FAILED,
            "watermark",
        ),
        (MemoryError(), "out-of-memory", EXIT_FAILED, "--resume"),
        (
            RuntimeError("invalid low watermark ratio 1.4"),
            "mps-watermark",
            EXIT_USAGE,
            "mps_low_watermark_ratio",
        ),
        (
            ModuleNotFoundError("No module named 'vllm'", name="vllm"),
            "missing-backend",
            EXIT_USAGE,
            "install-cuda",
        ),
        (
            ModuleNotFoundError("x", name="unsloth.models"),
            "missing-backend",
            EXIT_USAGE,
            "device.unsloth=off",
        ),
        (
            AssertionError("Torch not compiled with CUDA enabled"),
            "cuda-unavailable",
            EXIT_USAGE,
            "device.type",
        ),
        (RuntimeError("No CUDA GPUs are available"), "cuda-unavailable", EXIT_USAGE, "GPU node"),
        (
            FileNotFoundError(2, "No such file", "datasets/x/train.jsonl"),
            "missing-file",
            EXIT_USAGE,
            "make data",
        ),
    ],
)
def test_known_failures(exc, kind, code, fix_words):
    failure = describe_failure(exc)
    assert failure is not None
    assert (failure.kind, failure.exit_code) == (kind, code)
    assert fix_words in failure.fix


def test_missing_file_names_the_file():
    assert (
        "datasets/x/train.jsonl"
        in describe_failure(FileNotFoundError(2, "No such file", "datasets/x/train.jsonl")).message
    )


def test_unknown_failures_are_not_dressed_up():
    assert describe_failure(ValueError("a bug")) is None
    assert describe_failure(ModuleNotFoundError("x", name="numpy")) is None  # a broken install, not an extra


def test_run_cli_exit_codes(capsys):
    def ok(argv):
        return 0

    def bad_input(argv):
        raise UsageError("--dataset-name is required", fix="pass --dataset-name NAME")

    def interrupted(argv):
        raise KeyboardInterrupt

    def bug(argv):
        raise ValueError("a bug")

    assert run_cli(ok) == 0
    assert run_cli(bad_input) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err == "error: --dataset-name is required\nfix: pass --dataset-name NAME\n"
    assert run_cli(interrupted) == EXIT_INTERRUPTED
    with pytest.raises(ValueError):
        run_cli(bug)


def test_a_reader_closing_the_pipe_is_not_a_failure():
    def print_to_closed_pipe(
        argv,
    ):  # what `python -m lib.common.config show ... | head -1` meets with long output
        raise BrokenPipeError(32, "Broken pipe")

    assert run_cli(print_to_closed_pipe) == 0


@pytest.mark.parametrize(
    "exc",
    [
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried "
            "to allocate 40000000000 bytes. Error code 12 (Cannot allocate memory)"
        ),
        MemoryError("Unable to allocate 37.3 GiB for an array"),
    ],
)
def test_cpu_out_of_memory_names_the_block_and_batch_size(exc):
    failure = describe_failure(exc)
    assert (failure.kind, failure.exit_code) == ("out-of-memory", EXIT_FAILED)
    assert "block_size" in failure.fix and "batch" in failure.fix


def test_a_full_disk_names_the_path_the_free_space_and_the_fix(tmp_path):
    import errno

    target = tmp_path / "models" / "run_info.json"  # its folder does not exist: free space is still told
    for exc in (
        OSError(errno.ENOSPC, "No space left on device", str(target)),
        OSError(errno.EDQUOT, "Disk quota exceeded", str(target)),
    ):
        failure = describe_failure(exc)
        assert (failure.kind, failure.exit_code) == ("disk-full", EXIT_FAILED)
        assert str(target) in failure.message and "free there now" in failure.message
        assert "free space" in failure.fix and "--resume" in failure.fix
    assert "quota" in describe_failure(OSError(errno.EDQUOT, "Disk quota exceeded")).message
    # a library that re-raises the OS error as its own, keeping it as the cause, or only in its text
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device", str(target))
        except OSError as inner:
            raise RuntimeError("could not save the checkpoint") from inner
    except RuntimeError as outer:
        assert describe_failure(outer).kind == "disk-full"
    text_only = RuntimeError(
        'Error while serializing: IoError(Os { code: 28, message: "No space left on device" })'
    )
    assert describe_failure(text_only).kind == "disk-full"
    assert describe_failure(OSError(errno.EACCES, "Permission denied")) is None


def test_a_full_disk_without_a_file_name_is_told_where_the_job_was_writing(tmp_path):
    """safetensors and torch.save do not say which file (torch not even why): the trainer names its run
    folder (name_the_folder). The exceptions are the texts both libraries raise on a full tmpfs."""
    from lib.common.errors import name_the_folder

    safetensors = RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    try:
        try:
            raise RuntimeError("basic_ios::clear: iostream error")
        except RuntimeError:
            raise RuntimeError(
                "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
            ) from None
    except RuntimeError as exc:
        torch_save = exc
    for exc in (safetensors, torch_save):
        located = name_the_folder(exc, tmp_path)
        failure = describe_failure(located)
        assert failure.kind == "disk-full" and f"writing {tmp_path} (" in failure.message
    bug = ValueError("a bug")
    assert name_the_folder(bug, tmp_path) is bug
    named = OSError(28, "No space left on device", "/data/x.json")
    assert name_the_folder(named, tmp_path) is named  # it already says where
