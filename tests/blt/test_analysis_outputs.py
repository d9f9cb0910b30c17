"""main_eval.py --eval-mode analyze writes into a folder shared with the user (default figures/): it replaces
only files it wrote itself (lib/common/outputs.py, main_eval.py's manifest) and refuses, before the model
loads, a file of a name it would write that it did not write, or an --output-dir that is a file.

Before: the user's own metrics.json, report.md and a png there were overwritten (exit 0), and an
--output-dir that is a file gave a traceback after the whole analysis. The model is the tiny one of
tests/blt/test_blt.py, trained for 20 steps (about a second).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import call_script, one_thread  # noqa: F401  (one_thread: a module fixture)

from lib.blt import analysis
from lib.blt.data import build_default_corpus
from lib.common.errors import EXIT_OK, EXIT_USAGE
from lib.common.outputs import MANIFEST

TINY = ["hidden_size=32", "num_layers=1", "num_heads=2", "block_size=32", "batch_size=8",
        "gradient_accumulation_steps=1", "warmup_steps=2", "log_steps=10", "num_workers=0"]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("blt_outputs")
    build_default_corpus(root / "corpus")
    args = [*TINY, f"train_data_dir={root / 'corpus' / 'train'}", f"eval_data_dir={root / 'corpus' / 'eval'}",
            f"cache_dir={root / 'cache'}", f"output_dir={root / 'models'}", "max_steps=20", "eval_steps=10",
            "save_steps=20", "run_id=t1"]  # fmt: skip
    assert call_script("main_trainer", ["--config", "configs/blt/entropy_cpu.json", *args]) == EXIT_OK
    return root / "models" / "t1"


@pytest.fixture
def no_model_load(monkeypatch):
    """A tripwire: the test fails if the analysis gets as far as loading the model."""

    def refuse(*args, **kwargs):
        raise AssertionError("the analysis loaded the model before refusing its output folder")

    monkeypatch.setattr(analysis, "load_model", refuse)


def analyze(trained: Path, out: Path, *extra: str) -> int:
    argv = ["--eval-mode", "analyze", "--model-type", "blt", "--model-path", str(trained), "--output-dir",
            str(out), "--max-bytes", "300", *extra]  # fmt: skip
    return call_script("main_eval", argv)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("theirs", ["metrics.json", "report.md", "entropy_trace.png"])
def test_a_users_file_of_a_name_it_writes_is_refused_before_the_model_loads(
    trained, tmp_path, capsys, no_model_load, theirs
):
    out = tmp_path / "mine"
    out.mkdir()
    (out / theirs).write_bytes(b"the user's own")
    (out / "notes.txt").write_text("mine too")
    before = snapshot(out)
    assert analyze(trained, out, "--save-plots") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and theirs in err and str(out) in err and "fix:" in err, err
    assert snapshot(out) == before  # nothing replaced, nothing added (no manifest either)
    assert not list(tmp_path.glob(".*partial*"))


def test_an_output_dir_that_is_a_file_is_refused_before_the_model_loads(
    trained, tmp_path, capsys, no_model_load
):
    out = tmp_path / "report.txt"
    out.write_text("a file")
    assert analyze(trained, out) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"--output-dir {out} is a file" in err, err
    assert out.read_text() == "a file"


def test_a_new_analysis_replaces_only_its_own_unchanged_files(trained, tmp_path):
    out = tmp_path / "figures"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert analyze(trained, out, "--save-plots") == EXIT_OK
    owned = json.loads((out / MANIFEST).read_text())["files"]
    assert {"metrics.json", "report.md", "entropy_trace.png", "patch_length_hist.png"} <= set(owned)
    edited = out / "patch_length_hist.png"
    edited.write_bytes(
        edited.read_bytes() + b"edited"
    )  # changed since it was written: no longer provably its own
    assert analyze(trained, out) == EXIT_OK  # no figures this time
    assert not (out / "entropy_trace.png").exists()  # its own, unchanged: removed with the previous analysis
    assert edited.read_bytes().endswith(b"edited") and (out / "notes.txt").read_text() == "mine"
    assert set(json.loads((out / MANIFEST).read_text())["files"]) == {"metrics.json", "report.md"}


def test_an_analysis_written_before_the_manifest_is_replaced(trained, tmp_path):
    """Folders written by main_eval.py before it kept a manifest: its metrics.json names the figures."""
    out = tmp_path / "old"
    out.mkdir()
    old = {"model_type": "blt", "bits_per_byte": 7.9, "figures": {"entropy_trace": "entropy_trace.png"}}
    (out / "metrics.json").write_text(json.dumps(old))
    (out / "report.md").write_text("old report")
    (out / "entropy_trace.png").write_bytes(b"old png")
    assert analyze(trained, out, "--save-plots") == EXIT_OK
    assert json.loads((out / "metrics.json").read_text())["bytes"] == 300
    assert (out / "entropy_trace.png").read_bytes() != b"old png"
