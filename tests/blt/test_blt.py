"""The byte-level entropy model: data, training, resume after SIGTERM, legacy configs, analysis, make train-mps.

A tiny GPT-2 over bytes (1 layer, hidden 32, block 32) trains on the default corpus (built from this
project's own text into a temporary folder) in well under a second per 100 steps. An untrained model is
close to a uniform guess over its 259 outputs: log2(259) = 8.02 bits per byte, so anything below 8.0 was
learned. Torch runs on one thread here: the CI machine has two cores shared with other jobs, where a second
thread mostly waits.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from helpers import ROOT, call_script, load_script, one_thread, run  # noqa: F401  (one_thread: a module fixture)

from lib.blt.analysis import analyze_blt, config_of_run
from lib.blt.data import BOS, EOS, build_default_corpus, load_byte_data
from lib.blt.patches import patch_lengths, patch_starts_rise, patch_starts_threshold, patch_statistics
from lib.common.config import resolve_config
from lib.common.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError, run_cli

TINY = [
    "hidden_size=32",
    "num_layers=1",
    "num_heads=2",
    "block_size=32",
    "batch_size=8",
    "gradient_accumulation_steps=1",
    "dropout=0",  # no dropout: a resumed run must match an uninterrupted one exactly
    "learning_rate=3e-3",
    "warmup_steps=5",
    "log_steps=10",
    "num_workers=0",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A folder with the default corpus built into it (train/, eval/, info.json)."""
    folder = tmp_path_factory.mktemp("blt")
    build_default_corpus(folder / "corpus")
    return folder


def tiny(root: Path, *extra: str) -> list[str]:
    return [
        *TINY,
        f"train_data_dir={root / 'corpus' / 'train'}",
        f"eval_data_dir={root / 'corpus' / 'eval'}",
        f"cache_dir={root / 'cache'}",
        f"output_dir={root / 'models'}",
        *extra,
    ]


def trainer(argv: list[str]) -> int:
    return call_script("main_trainer", argv)


@pytest.fixture(scope="module")
def trained(root) -> Path:
    args = tiny(root, "max_steps=60", "eval_steps=30", "save_steps=30", "run_id=t1")
    assert trainer(["--config", "configs/blt/entropy_cpu.json", *args]) == EXIT_OK
    return root / "models" / "t1"


# ---------------------------------------------------------------- data


def test_default_corpus_is_small_and_built_from_the_project(root):
    info = json.loads((root / "corpus" / "info.json").read_text())
    sizes = {name: entry["bytes"] for name, entry in info["files"].items()}
    assert set(sizes) >= {"train/readme.md", "train/problems.txt", "eval/claude.md", "eval/problems.txt"}
    assert 50_000 < sum(sizes.values()) < 200_000
    assert (root / "corpus" / "eval" / "claude.md").read_bytes() == (ROOT / "CLAUDE.md").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        build_default_corpus(root / "corpus")


def test_files_are_read_raw_and_cached_by_name_size_and_mtime(tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "a.bin").write_bytes(b"\xff\xfe\x00ab")  # not UTF-8: bytes are bytes
    (data / "sub" / "b.txt").write_bytes("é".encode())
    (data / ".DS_Store").write_bytes(b"junk")  # hidden: skipped
    first = load_byte_data(data, tmp_path / "cache", "train_data_dir")
    assert first.files == ("a.bin", "sub/b.txt")
    expected = [BOS, 0xFF, 0xFE, 0x00, 0x61, 0x62, EOS, BOS, 0xC3, 0xA9, EOS]
    assert first.tokens.tolist() == expected and first.n_bytes == 7
    assert first.document_spans() == [("a.bin", 1, 5), ("sub/b.txt", 8, 2)]
    again = load_byte_data(data, tmp_path / "cache", "train_data_dir")
    assert again.cache_path == first.cache_path
    os.utime(data / "a.bin", ns=(1, 1))  # a changed file gets a new cache entry
    changed = load_byte_data(data, tmp_path / "cache", "train_data_dir")
    assert changed.cache_path != first.cache_path and changed.tokens.tolist() == expected
    assert not list((tmp_path / "cache").glob("*.tmp"))


@pytest.mark.parametrize(
    ("which", "make", "message"),
    [
        ("train_data_dir", None, "does not exist"),
        ("train_data_dir", "empty", "holds only empty files (1)"),
        ("eval_data_dir", "nothing", "holds no files"),
    ],
)
def test_missing_or_empty_data_folder_exits_2_with_a_clear_message(
    root, tmp_path, capsys, which, make, message
):
    folder = tmp_path / "texts"
    if make:
        folder.mkdir()
        (folder / ".hidden").write_text("skipped")
        if make == "empty":
            (folder / "empty.txt").write_text("")
    code = trainer(["--config", "configs/blt/entropy_cpu.json", *tiny(root, f"{which}={folder}")])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert f"{which}: {folder} {message}" in err and "fix:" in err and "Traceback" not in err


# ---------------------------------------------------------------- training


def test_tiny_run_learns_below_a_uniform_guess_and_writes_its_run_folder(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    history = json.loads((trained / "log_history.json").read_text())
    evals = [h for h in history if "eval_bits_per_byte" in h]
    assert [h["step"] for h in evals] == [0, 30, 60]
    # untrained: close to a uniform guess, log2(259) = 8.02 (a random init favours some bytes by chance)
    assert evals[0]["eval_bits_per_byte"] > 7.9
    assert metrics["eval_bits_per_byte"] == evals[-1]["eval_bits_per_byte"] < 8.0
    assert evals[-1]["eval_bits_per_byte"] < 6.5  # learned: byte frequencies alone give about 5
    assert metrics["global_step"] == 60 and metrics["bytes_seen"] == 60 * 8 * 32
    for name in (
        "config.json",
        "command.txt",
        "run_info.json",
        "trainer_state.json",
        "model/model.safetensors",
    ):
        assert (trained / name).is_file(), name
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == ["checkpoint-30", "checkpoint-60"]
    info = json.loads((trained / "run_info.json").read_text())
    assert (info["status"], info["step"], info["model_type"]) == ("completed", 60, "blt")
    assert info["git_commit"] and "torch" in info["packages"] and "device=cpu" in info["device"]
    assert (trained.parent / "latest").read_text().strip() == "t1"
    config = json.loads((trained / "config.json").read_text())
    assert config["hidden_size"] == 32 and config["model_type"] == "blt"


def test_an_existing_run_is_refused_without_resume(trained, root, capsys):
    code = trainer(["--config", "configs/blt/entropy_cpu.json", *tiny(root, "max_steps=60", "run_id=t1")])
    assert code == EXIT_USAGE
    assert "already exists (completed)" in capsys.readouterr().err


def test_a_run_id_is_a_plain_name_and_a_users_folder_is_never_touched(root, tmp_path, capsys):
    """A run_id that is a path, or a plain one that names an existing folder we did not write, exits 2 and
    leaves the folder as it was (a user's file in its model/ was once replaced when the run completed)."""
    from lib.common.runs import replace_in_run

    user = tmp_path / "mine"
    (user / "model").mkdir(parents=True)
    (user / "model" / "notes.txt").write_text("precious")
    base = ["--config", "configs/blt/entropy_cpu.json", *tiny(root, "max_steps=2", "eval_steps=1")]
    for bad in (str(user), "..", ".", "a/b", "-x"):
        assert trainer([*base, f"run_id={bad}"]) == EXIT_USAGE, bad
        assert "key 'run_id' must match" in capsys.readouterr().err
    assert trainer([*base, f"output_dir={tmp_path}", "run_id=mine"]) == EXIT_USAGE
    assert "is not a byte-level model run folder" in capsys.readouterr().err
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == ["model", "model/notes.txt"]
    assert (user / "model" / "notes.txt").read_text() == "precious"
    assert not (tmp_path / "latest").exists()
    with pytest.raises(UsageError, match="is not a run folder of ours"), replace_in_run(user, "model"):
        pass
    assert (user / "model" / "notes.txt").read_text() == "precious"
    (tmp_path / "empty").mkdir()  # an empty folder holds nothing to lose: a run may start there
    assert trainer([*base, f"output_dir={tmp_path}", "run_id=empty"]) == EXIT_OK
    assert (tmp_path / "empty" / "model" / "model.safetensors").is_file()


def _interrupt_after_checkpoint(monkeypatch, step: int) -> None:
    """SIGTERM to this process right after checkpoint-<step> is saved (as SLURM would, mid-training): the
    event itself triggers it, so a slow or busy machine interrupts at the same point as a fast one."""
    import lib.blt.training as blt_training

    save = blt_training.save_checkpoint

    def save_then_signal(run_dir, at_step, *args, **kwargs):
        saved = save(run_dir, at_step, *args, **kwargs)
        if at_step == step:
            os.kill(os.getpid(), signal.SIGTERM)
        return saved

    monkeypatch.setattr(blt_training, "save_checkpoint", save_then_signal)


def test_sigterm_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(root, capsys, monkeypatch):
    import torch
    from safetensors.torch import load_file

    args = [
        "--config",
        "configs/blt/entropy_cpu.json",
        *tiny(root, "max_steps=150", "eval_steps=50", "save_steps=20"),
    ]
    run_dir = root / "models" / "r1"
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # a late signal must not end pytest
    try:
        with monkeypatch.context() as patch:
            _interrupt_after_checkpoint(patch, 20)
            assert trainer([*args, "run_id=r1"]) == EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["stopped_by"] == "SIGTERM"
    stopped = info["step"]
    assert 20 <= stopped < 150
    assert (run_dir / "checkpoints" / f"checkpoint-{stopped}").is_dir()  # saved where it stopped
    latest = root / "models" / "latest"
    assert not (run_dir / "model").exists()
    assert not latest.exists() or latest.read_text().strip() != "r1"  # `latest` names completed runs only
    assert "continue with --resume" in capsys.readouterr().out

    assert trainer([*args, "run_id=r1", "hidden_size=64", "--resume"]) == EXIT_USAGE
    assert "model shape changed" in capsys.readouterr().err
    assert trainer([*args, "run_id=r1", "--resume"]) == EXIT_OK
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["status"], info["step"], info["resumed"]) == ("completed", 150, 1)
    steps = [h["step"] for h in json.loads((run_dir / "log_history.json").read_text()) if "loss" in h]
    assert steps == list(range(10, 151, 10))  # every log point once, across the interruption

    assert trainer([*args, "run_id=u1"]) == EXIT_OK  # the same run, never interrupted
    resumed = load_file(run_dir / "model" / "model.safetensors")
    straight = load_file(root / "models" / "u1" / "model" / "model.safetensors")
    for name, tensor in straight.items():
        assert torch.allclose(resumed[name], tensor, atol=1e-6), name


def test_legacy_config_trains_after_migration_with_a_warning_per_key(root, tmp_path, caplog):
    legacy = {
        "model_type": "blt",
        "byte_lm_hidden_size": 32,
        "byte_lm_num_layers": 1,
        "byte_lm_num_heads": 2,
        "byte_lm_dropout": 0.0,
        "memory_reserve_pct": 20,
        "max_steps": 10,
        "eval_steps": 10,
        "force_cpu": True,
    }
    config = tmp_path / "old_blt.json"
    config.write_text(json.dumps(legacy))
    extra = [
        a
        for a in tiny(root, "run_id=legacy")
        if a.split("=")[0] not in ("hidden_size", "num_layers", "num_heads", "dropout")
    ]
    with caplog.at_level(logging.WARNING):
        assert trainer(["--config", str(config), *extra]) == EXIT_OK
    for old, new in (
        ("hidden_size", "hidden_size"),
        ("num_layers", "num_layers"),
        ("num_heads", "num_heads"),
        ("dropout", "dropout"),
    ):
        assert f"renamed legacy key 'byte_lm_{old}' to '{new}'" in caplog.text
    assert "dropped legacy key 'memory_reserve_pct'" in caplog.text
    run_dir = root / "models" / "legacy"
    saved = json.loads((run_dir / "config.json").read_text())
    assert not any(k.startswith("byte_lm_") or k == "memory_reserve_pct" for k in saved)
    model = json.loads((run_dir / "model" / "config.json").read_text())
    assert (model["n_embd"], model["n_layer"], model["n_head"]) == (32, 1, 2)


@pytest.mark.slow  # trains a model in a subprocess: 10-45 s here (make test-slow)
def test_make_train_mps_falls_back_to_cpu_with_the_reason_and_trains(root):
    args = " ".join(tiny(root, "max_steps=20", "eval_steps=10", "run_id=mps1"))
    result = run(["make", "train-mps", f"ARGS={args}"], env={"OMP_NUM_THREADS": "1"})
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "configs/blt/entropy_mps.json" in result.stdout  # the MPS profile is the default CONFIG
    assert "mps requested but not available (MPS exists only on macOS" in output and "using cpu" in output
    info = json.loads((root / "models" / "mps1" / "run_info.json").read_text())
    assert info["status"] == "completed" and "device=cpu" in info["device"]
    config = json.loads((root / "models" / "mps1" / "config.json").read_text())
    device = config["device"]  # the profile's device section (configs/profiles/mps.yaml)
    assert (device["type"], device["mps_high_watermark_ratio"], device["mps_low_watermark_ratio"]) == (
        "mps",
        0.8,
        0.0,
    )


def test_shipped_profiles_match_their_hardware():
    mps = resolve_config(ROOT / "configs/blt/entropy_mps.json")
    cpu = resolve_config(ROOT / "configs/blt/entropy_cpu.json")
    cuda = resolve_config(ROOT / "configs/blt/entropy_cuda.json")
    assert (mps["device"]["type"], mps["mixed_precision"], mps["num_workers"]) == ("mps", False, 0)
    assert (mps["device"]["mps_high_watermark_ratio"], mps["device"]["mps_low_watermark_ratio"]) == (0.8, 0.0)
    assert (cpu["device"]["type"], cpu["mixed_precision"]) == ("cpu", False)
    assert (cuda["device"]["type"], cuda["mixed_precision"]) == ("cuda", True)
    for cfg in (mps, cpu, cuda):  # the original recipe otherwise
        assert (cfg["hidden_size"], cfg["num_layers"], cfg["block_size"], cfg["max_steps"]) == (
            128,
            2,
            128,
            5000,
        )


def test_an_output_dir_that_is_a_file_is_refused_at_the_start(root, tmp_path, capsys):
    output = tmp_path / "a_file"
    output.write_text("mine")
    code = trainer(
        ["--config", "configs/blt/entropy_cpu.json", *tiny(root, f"output_dir={output}", "run_id=f1")]
    )
    err = capsys.readouterr().err
    assert code == EXIT_USAGE and f"output_dir {output} is a file" in err and "fix:" in err
    assert "Traceback" not in err and output.read_text() == "mine"


def test_a_failed_run_says_failed_with_the_reason_and_resumes(root, capsys, monkeypatch):
    """Any exception in training marks run_info.json 'failed' with its reason; --resume then completes."""
    import lib.blt.training as blt_training

    args = [
        "--config",
        "configs/blt/entropy_cpu.json",
        *tiny(root, "max_steps=20", "eval_steps=10", "run_id=fail1"),
    ]

    def broken_step(*args, **kwargs):
        raise ValueError("broken step")

    # an injected fault (what fails does not matter here: how a failing run is recorded does)
    with monkeypatch.context() as patch, pytest.raises(ValueError, match="broken step"):
        patch.setattr(blt_training, "train_step", broken_step)
        trainer(args)
    info = json.loads((root / "models" / "fail1" / "run_info.json").read_text())
    assert (info["status"], info["reason"]) == ("failed", "ValueError: broken step")
    assert not list(root.joinpath("models").glob(".fail1.lock"))  # the lock went with the run
    assert trainer([*args, "--resume"]) == EXIT_OK
    info = json.loads((root / "models" / "fail1" / "run_info.json").read_text())
    assert (info["status"], info["step"]) == ("completed", 20)


@pytest.mark.slow  # trains in a subprocess, then resumes: about 15-30 s here
def test_kill_9_while_saving_leaves_only_complete_checkpoints_and_resume_finishes(root):
    """kill -9 the moment a checkpoint folder appears under checkpoints/ (its temporary .partial folder while
    it is written, or the renamed one); --resume takes over the dead trainer's lock, removes the leftover
    temporary folder, and reaches max_steps."""
    import subprocess
    import sys
    import time

    from helpers import HANG_GUARD_S

    run_dir = root / "models" / "k9"
    args = [sys.executable, "scripts/main_trainer.py", "--config", "configs/blt/entropy_cpu.json",
            *tiny(root, "max_steps=300", "eval_steps=300", "save_steps=10", "run_id=k9")]  # fmt: skip
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = run_dir / "checkpoints"
    while not (checkpoints.is_dir() and any(checkpoints.iterdir())):
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.005)
    process.kill()
    process.wait(timeout=HANG_GUARD_S)
    for entry in checkpoints.iterdir():  # whatever the kill left: complete checkpoints, or temporary names
        assert entry.name.startswith(".") or (entry / "trainer_state.json").is_file(), entry.name
    (checkpoints / ".checkpoint-20.4242.partial").mkdir(exist_ok=True)  # and one more, half-written
    (checkpoints / ".checkpoint-20.4242.partial" / "model.safetensors").write_bytes(b"\0" * 10)
    resumed = run(args + ["--resume"], env={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "took over the lock" in resumed.stderr
    info = json.loads((run_dir / "run_info.json").read_text())
    assert (info["status"], info["step"], info["resumed"]) == ("completed", 300, 1)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-290", "checkpoint-300"]


# ---------------------------------------------------------------- patching rules


def test_patch_boundaries_are_exactly_where_each_rule_fires():
    # binary fractions, so the equal-to-threshold cases are exact: equality never starts a patch
    entropy = [0.25, 1.0, 0.5, 0.75, 1.5, 0.125, 0.625, 0.75]
    # threshold rule, entropy > 0.5: bytes 1, 3, 4, 6, 7 (byte 2 is exactly 0.5); byte 0 always starts one
    assert patch_starts_threshold(entropy, 0.5).tolist() == [0, 1, 3, 4, 6, 7]
    # rise rule, H_i - H_{i-1} > 0.5: rises are +0.75 (1), -0.5, +0.25, +0.75 (4), -1.375, +0.5 (6, equal), +0.125
    assert patch_starts_rise(entropy, 0.5).tolist() == [0, 1, 4]
    assert patch_starts_threshold(entropy, 10).tolist() == [0] == patch_starts_rise(entropy, 10).tolist()
    assert patch_starts_threshold(entropy, 0).tolist() == list(range(8))
    assert patch_starts_threshold([], 0.5).tolist() == [] == patch_starts_rise([], 0.5).tolist()
    lengths = patch_lengths(patch_starts_rise(entropy, 0.5), len(entropy))
    assert lengths.tolist() == [1, 3, 4]
    stats = patch_statistics(lengths, len(entropy))
    assert stats["patches"] == 3 and stats["mean_length"] == pytest.approx(8 / 3)
    assert stats["patches_per_kb"] == pytest.approx(3 * 1024 / 8)
    with pytest.raises(ValueError, match="one-dimensional"):
        patch_starts_threshold(np.zeros((2, 2)), 0.5)


# ---------------------------------------------------------------- analysis


def test_analysis_writes_figures_metrics_and_report(trained, root, tmp_path):
    cfg = resolve_config(ROOT / "configs/blt/entropy_cpu.json", tiny(root))
    out = tmp_path / "analysis"
    metrics = analyze_blt(str(trained), cfg, out, save_plots=True, thresholds=[0.5, 2, 4, 7])
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    assert set(metrics["figures"]) == {
        "entropy_trace",
        "patch_length_hist",
        "bits_per_byte",
        "patch_length_vs_threshold",
    }
    report = (out / "report.md").read_text()
    for name in metrics["figures"].values():
        png = (out / name).read_bytes()
        assert png.startswith(PNG_MAGIC) and len(png) > 5000, name
        assert f"]({name})" in report  # embedded by relative path
    eval_bytes = sum(f.stat().st_size for f in (root / "corpus" / "eval").iterdir())
    assert metrics["entropy_unit"] == "bits" and metrics["bytes"] == eval_bytes
    assert (
        metrics["bits_per_byte"] < 8.0
        and 0 <= metrics["entropy"]["mean"] <= metrics["entropy"]["max_possible"]
    )
    assert [r["threshold"] for r in metrics["sweep"]["threshold"]] == [0.5, 2.0, 4.0, 7.0]
    for rule in ("threshold", "rise"):
        per_kb = [r["patches_per_kb"] for r in metrics["sweep"][rule]]
        assert per_kb == sorted(per_kb, reverse=True)  # a higher threshold never adds a patch start
        assert metrics["patches"][rule]["threshold"] == 0.5
    assert (
        metrics["training"]["eval_bits_per_byte"]
        == json.loads((trained / "metrics.json").read_text())["eval_bits_per_byte"]
    )
    assert not list(out.glob(".*tmp*"))


def test_analysis_finds_latest_and_caps_bytes(trained, root, tmp_path):
    cfg = resolve_config(ROOT / "configs/blt/entropy_cpu.json", tiny(root))
    metrics = analyze_blt("latest", cfg, tmp_path, save_plots=False, max_bytes=700, seed=1)
    assert metrics["bytes"] == 700 and metrics["figures"] == {}
    assert Path(metrics["run"]).parent == root / "models"
    assert not list(tmp_path.glob("*.png")) and (tmp_path / "report.md").is_file()
    pointer = analyze_blt(str(root / "models" / "latest"), cfg, tmp_path, save_plots=False, max_bytes=700)
    assert pointer["run"] == metrics["run"]  # the `latest` file itself names the same run
    with pytest.raises(UsageError, match="does not exist"):
        analyze_blt(str(tmp_path / "nowhere"), cfg, tmp_path, save_plots=False)
    own = config_of_run(str(trained), resolve_config(None, schema_name="blt"))
    assert own["eval_data_dir"] == str(root / "corpus" / "eval") and own["hidden_size"] == 32


def test_main_eval_analyze_with_the_original_flag_spellings(trained, tmp_path):

    out = tmp_path / "cli"
    argv = ["--eval_mode", "analyze", "--model_type", "blt", "--model_path", str(trained), "--output_dir", str(out),
            "--save_plots", "--max_bytes", "900", "entropy_threshold=1.5"]  # fmt: skip
    assert call_script("main_eval", argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (
        metrics["bytes"] == 900 and metrics["patches"]["threshold"]["threshold"] == 1.5
    )  # the run's config + override
    assert (out / "entropy_trace.png").read_bytes().startswith(PNG_MAGIC)


def test_benchmark_quick_run_writes_json_and_markdown(root, tmp_path):
    bench = load_script("bench/blt")
    overrides = [a for a in tiny(root) if not a.startswith(("output_dir", "eval_data_dir"))]
    code = run_cli(
        bench.main,
        ["--devices", "cpu", "--steps", "2", "--warmup", "1", "--output-dir", str(tmp_path), *overrides],
    )
    assert code == EXIT_OK
    result = json.loads((tmp_path / "blt.json").read_text())
    (case,) = result["cases"]
    assert case["device"] == "cpu" and case["bytes_per_step"] == 8 * 32 and case["bytes_per_second"] > 0
    assert "bytes/s" in (tmp_path / "blt.md").read_text()


@pytest.mark.slow  # trains in a subprocess twice: about 15-30 s here
def test_a_full_disk_fails_with_a_message_marks_the_run_failed_and_resumes_once_freed(root, tmp_path):
    """A real tmpfs (tests/small_disk.py) holds output_dir; once the run has started it is filled but for a
    few KB, so the first checkpoint (model.safetensors, then torch.save's training state) cannot be written:
    exit 1 naming the run folder, no traceback, run_info.json 'failed', no temporary folder left; with the
    space freed, --resume completes the run."""
    import sys

    from small_disk import run_until_disk_fills, small_disk

    with small_disk(tmp_path / "disk", "16m") as disk:
        args = [sys.executable, "scripts/main_trainer.py", "--config", "configs/blt/entropy_cpu.json",
                *tiny(root, "max_steps=20", "eval_steps=20", "save_steps=10", "run_id=full", f"output_dir={disk}")]  # fmt: skip
        run_dir = disk / "full"
        returncode, stderr, ballast = run_until_disk_fills(args, ROOT, run_dir, disk)
        assert returncode == 1, stderr[-3000:]
        assert "Traceback" not in stderr and f"error: the disk is full while writing {run_dir}" in stderr
        info = json.loads((run_dir / "run_info.json").read_text())
        assert info["status"] == "failed" and info["reason"].startswith("the disk is full")
        assert not list((run_dir / "checkpoints").iterdir()) and not list(run_dir.glob(".*"))
        ballast.unlink()  # space freed
        resumed = run([*args, "--resume"], env={"OMP_NUM_THREADS": "1"})
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        info = json.loads((run_dir / "run_info.json").read_text())
        assert (info["status"], info["step"], info["resumed"]) == ("completed", 20, 1)
