"""Bad input to main_eval.py and generate_data.py: exit 2 with a message naming the thing and its fix, no
traceback, refused before any model is loaded or any sample generated, and nothing already there lost.

"Before any model is loaded" is checked by replacing load_model_reference (what main_eval loads every model
with) where lib/llm/evaluate.py calls it by a function that fails the test when called. (Patching it in
lib.llm.models instead leaked: a first import of lib.llm.evaluate inside a patched test bound the failing
function for good, and later tests of this file failed when it ran alone.)
"""

from __future__ import annotations

import json
import os

import pytest
from helpers import call_script, make_dataset, run_python, tiny_model_on

import lib.llm.evaluate as evaluate
import lib.llm.models as models
from lib.common.errors import EXIT_USAGE
from lib.common.outputs import MANIFEST
from lib.control.dataset_format import load_records


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    dataset = make_dataset(root, "di", ["double_integrator"], 2, 4)
    tiny_model_on(root / "tiny", load_records(dataset, "eval", round_robin=True)[0])
    return root


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if main_eval gets as far as loading a model."""

    def refuse(reference, *args, **kwargs):
        raise AssertionError(f"main_eval loaded {reference} before refusing the input")

    monkeypatch.setattr(evaluate, "load_model_reference", refuse)


def eval_argv(workspace, out, *extra, model=None):
    return ["--model-path", str(model or workspace / "tiny"), "--dataset", "di", "--num-samples", "2",
            "--max-new-tokens", "4", "--output-dir", str(out), f"data.datasets_dir={workspace / 'datasets'}",
            "device.type=cpu", *extra]  # fmt: skip


def refused(capsys, script, argv, *named):
    """Run the script; it must exit 2 (a traceback would raise here) with a message naming each of `named`."""
    assert call_script(script, argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err and "fix:" in err, err
    for text in named:
        assert text in err, (text, err)
    return err


def snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


# ---------------------------------------------------------------- main_eval: the output folder


def test_a_foreign_metrics_json_is_refused_and_its_files_survive(workspace, tmp_path, capsys, no_model_load):
    """Before: metrics.json's `files` (data.csv, notes.txt) were deleted as 'the previous evaluation'."""
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "metrics.json").write_text(json.dumps({"files": ["data.csv", "notes.txt"], "accuracy": 0.9}))
    (out / "data.csv").write_text("a,b\n1,2\n")
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    refused(capsys, "main_eval", eval_argv(workspace, out), "metrics.json", str(out), "--output-dir")
    assert snapshot(out) == before  # nothing removed, nothing added (no manifest either)
    assert not list(tmp_path.glob(".*partial*"))


def test_a_foreign_metrics_json_is_refused_from_the_command_line_too(workspace, tmp_path):
    out = tmp_path / "theirs"
    out.mkdir()
    (out / "metrics.json").write_text('{"files": ["data.csv"]}')
    (out / "data.csv").write_text("keep")
    result = run_python(["scripts/main_eval.py", *eval_argv(workspace, out)])
    assert result.returncode == EXIT_USAGE, result.stderr
    assert "Traceback" not in result.stderr and "metrics.json" in result.stderr
    assert (out / "data.csv").read_text() == "keep"


def test_only_unchanged_files_of_its_own_manifest_are_removed(workspace, tmp_path, capsys):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "data.csv").write_text("theirs")  # another tool's file, and a forged manifest naming it
    argv = eval_argv(workspace, out, "--save-plots", "--plot-instances", "2")
    assert call_script("main_eval", argv) == 0
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["tool"] == "scripts/main_eval.py"
    assert {"metrics.json", "report.md", "samples.jsonl", "double_integrator_trajectory_1.png"} <= set(
        manifest["files"]
    )
    assert "data.csv" not in manifest["files"]
    edited = out / "phase_portrait_double_integrator_1.png"
    edited.write_bytes(edited.read_bytes() + b"edited")  # changed since main_eval wrote it: kept
    assert call_script("main_eval", eval_argv(workspace, out, "--save-plots", "--plot-instances", "1")) == 0
    assert not (out / "double_integrator_trajectory_1.png").exists()  # its own, unchanged: removed
    assert edited.read_bytes().endswith(b"edited")
    assert (out / "data.csv").read_text() == "theirs"
    assert "phase_portrait_double_integrator_1.png" not in json.loads((out / MANIFEST).read_text())["files"]
    capsys.readouterr()

    # a manifest of another tool naming data.csv is not ours: nothing it names is removed
    (out / MANIFEST).write_text(json.dumps({"tool": "other", "files": {"data.csv": ["0" * 64]}}))
    refused(capsys, "main_eval", eval_argv(workspace, out), "metrics.json")  # ours no longer provably
    assert (out / "data.csv").read_text() == "theirs"


def test_a_metrics_json_of_main_eval_before_the_manifest_is_replaced_but_removes_nothing(workspace, tmp_path):
    out = tmp_path / "legacy"
    out.mkdir()
    legacy = {"context": {"command": "python scripts/main_eval.py --dataset di"},
              "files": ["metrics.json", "report.md", "samples.jsonl", "old_trajectory_0.png", "data.csv"]}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(legacy))
    (out / "report.md").write_text("old report")
    (out / "old_trajectory_0.png").write_bytes(b"png")
    (out / "data.csv").write_text("keep")
    assert call_script("main_eval", eval_argv(workspace, out)) == 0
    assert json.loads((out / "metrics.json").read_text())["context"]["records"] == 2
    assert (out / "old_trajectory_0.png").read_bytes() == b"png" and (out / "data.csv").read_text() == "keep"


@pytest.mark.parametrize("where", ["a file", "below a file", "read-only folder"])
def test_an_unusable_output_dir_is_refused_before_any_model_loads(
    workspace, tmp_path, capsys, no_model_load, where
):
    blocker = tmp_path / "blocker"
    if where == "read-only folder":
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        blocker.mkdir()
        blocker.chmod(0o500)
        out = blocker / "eval"
    else:
        blocker.write_text("a file")
        out = blocker if where == "a file" else blocker / "eval"
    try:
        refused(capsys, "main_eval", eval_argv(workspace, out), str(out), "--output-dir")
    finally:
        if blocker.is_dir():
            blocker.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # no staging folder left


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_non_finite_temperature_is_refused_before_any_model_loads(
    workspace, tmp_path, capsys, no_model_load, value
):
    """Before: everything was evaluated, then writing metrics.json raised ValueError (NaN is not JSON).
    The config loader now refuses non-finite numbers anywhere (lib/common/config/files.py)."""
    out = tmp_path / "eval"
    refused(
        capsys, "main_eval", eval_argv(workspace, out, f"--temperature={value}"), "eval.temperature", value
    )
    assert not out.exists()


# ---------------------------------------------------------------- main_eval: damaged model folders


def damaged_copy(workspace, tmp_path, damage):
    broken = tmp_path / f"broken_{damage}"
    broken.mkdir()
    for item in (workspace / "tiny").iterdir():
        (broken / item.name).write_bytes(item.read_bytes())
    if damage == "empty config":
        (broken / "config.json").write_text("{}")
    elif damage == "config not json":
        (broken / "config.json").write_text("{not json")
    else:  # a copy cut short: half of the weights file
        weights = broken / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return broken


@pytest.mark.parametrize("damage", ["empty config", "config not json", "truncated weights"])
def test_a_damaged_model_folder_is_refused_before_any_model_loads(
    workspace, tmp_path, capsys, monkeypatch, damage
):
    """Before: a raw ValueError / SafetensorError traceback. The second model is checked before the first
    one is loaded, so a mistake in the last --model-path costs no generation."""
    broken = damaged_copy(workspace, tmp_path, damage)
    loaded = []
    monkeypatch.setattr(models, "load_model_reference", lambda ref, *a: loaded.append(ref) or 1 / 0)
    out = tmp_path / "eval"
    argv = eval_argv(workspace, out, "--labels", "good", "bad")
    argv[2:2] = [str(broken)]  # --model-path tiny broken
    refused(capsys, "main_eval", argv, str(broken), "save_pretrained")
    assert loaded == [] and not out.exists()


def test_loading_a_damaged_model_folder_is_a_usage_error(workspace, tmp_path):
    """The same mapping where the weights are really loaded (a folder damaged after the check)."""
    from lib.common.config import resolve_config
    from lib.common.device import settings_from_config, setup_device
    from lib.common.errors import UsageError

    cfg = resolve_config(None, overrides=["device.type=cpu"])
    setup = setup_device(settings_from_config(cfg))
    broken = damaged_copy(workspace, tmp_path, "truncated weights")
    with pytest.raises(UsageError, match="cannot be loaded") as info:
        models.load_model_reference(str(broken), cfg, setup)
    assert str(broken) in str(info.value)


# ---------------------------------------------------------------- generate_data


GEN = ["--systems", "double_integrator", "--total-samples", "4"]


@pytest.mark.parametrize("where", ["a file", "below a file"])
def test_generate_data_refuses_an_unusable_output_dir(tmp_path, capsys, where):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    out = blocker if where == "a file" else blocker / "datasets"
    refused(capsys, "generate_data", [*GEN, "--output-dir", str(out)], str(out), "--output-dir")
    assert blocker.read_text() == "a file" and sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_generate_data_refuses_a_read_only_output_dir(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        refused(capsys, "generate_data", [*GEN, "--output-dir", str(locked / "d")], "not writable")
    finally:
        locked.chmod(0o700)


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../escape", ".hidden"])
def test_generate_data_refuses_a_dataset_name_that_is_not_a_folder_name(tmp_path, capsys, name):
    """Before: '..' with --overwrite tried to move the parent folder away; 'a/b' made a nested folder."""
    out = tmp_path / "datasets"
    out.mkdir()
    (out / "keep").mkdir()
    argv = [*GEN, "--output-dir", str(out), "--dataset-name", name, "--overwrite"]
    refused(capsys, "generate_data", argv, "--dataset-name", "data.dataset_name", "never a path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["datasets"]
    assert [p.name for p in out.iterdir()] == ["keep"]


def test_generate_data_refuses_a_dataset_too_large_for_the_machine(tmp_path, capsys, monkeypatch):
    """Before: ran out of memory drawing the states, with advice about batch sizes and LoRA."""
    import lib.control.generate as generate

    monkeypatch.setattr(generate, "build_dataset", lambda *a, **k: pytest.fail("generation started"))
    # 10^8, the most generate.total_samples allows: about 400 GB of JSON lines at 6 decimals
    argv = ["--systems", "double_integrator", "--total-samples", "100000000", "--decimals", "6",
            "--output-dir", str(tmp_path / "d")]  # fmt: skip
    err = refused(capsys, "generate_data", argv, "100000000 samples", "--total-samples", "GB")
    assert "LoRA" not in err and "batch size" not in err
    assert not (tmp_path / "d").exists()


def test_generate_data_out_of_memory_names_the_sample_count(tmp_path, capsys, monkeypatch):
    """Memory running out anyway (a smaller machine than its physical memory says): the advice is about the
    sample count, not describe_failure's training advice."""
    import lib.control.generate as generate

    def out_of_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 29.8 GiB for an array")

    monkeypatch.setattr(generate, "build_dataset", out_of_memory)
    err = refused(
        capsys, "generate_data", [*GEN, "--output-dir", str(tmp_path / "d")], "4 samples", "--total-samples"
    )
    assert "LoRA" not in err and not (tmp_path / "d").exists()


def test_expected_value_decoding_with_a_temperature_is_refused_before_any_model_loads(
    workspace, tmp_path, capsys, no_model_load
):
    out = tmp_path / "eval"
    argv = eval_argv(workspace, out, "--decoding", "expected_value", "--temperature", "0.5")
    refused(capsys, "main_eval", argv, "eval.decoding is expected_value", "eval.temperature is 0.5")
    assert not out.exists()
