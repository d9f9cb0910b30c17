"""scripts/generate_data.py as a user runs it (subprocess from the repo root) and scripts/bench/data.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import ROOT, call_script, load_script, run_python

from lib.common.errors import EXIT_USAGE, UsageError
from lib.control.systems import SYSTEMS

SCRIPT = "scripts/generate_data.py"


def generate(out, *args):
    return run_python([SCRIPT, "--output-dir", str(out), *args])


def test_smoke_command_from_the_original_project(tmp_path):
    result = generate(
        tmp_path, "--systems", "double_integrator", "--total-samples", "10", "--dataset-name", "test_di"
    )
    assert result.returncode == 0, result.stderr
    folder = tmp_path / "test_di"
    assert sorted(p.name for p in folder.iterdir()) == ["eval.jsonl", "info.json", "train.jsonl"]
    info = json.loads((folder / "info.json").read_text())
    assert info["counts"] == {"train": 9, "eval": 1}
    assert info["command"][:2] == ["python", SCRIPT]
    assert len((folder / "train.jsonl").read_text().splitlines()) == 9
    assert "wrote" in result.stdout and "worst KKT residual" in result.stdout

    again = generate(
        tmp_path, "--systems", "double_integrator", "--total-samples", "10", "--dataset-name", "test_di"
    )
    assert again.returncode == 2
    assert (
        "already exists" in again.stderr and "--overwrite" in again.stderr and "Traceback" not in again.stderr
    )
    listed = generate(tmp_path, "--list")
    assert listed.returncode == 0 and "test_di" in listed.stdout and "double_integrator" in listed.stdout
    preview = generate(tmp_path, "--preview", "test_di")
    assert (
        preview.returncode == 0 and "<CONTROLS>" in preview.stdout and "Initial state: x_0" in preview.stdout
    )
    valid = generate(tmp_path, "--validate", "test_di")
    assert valid.returncode == 0 and "OK" in valid.stdout

    data = bytearray((folder / "train.jsonl").read_bytes())
    data[100] ^= 1
    (folder / "train.jsonl").write_bytes(bytes(data))
    corrupt = generate(tmp_path, "--validate", "test_di")
    assert corrupt.returncode == 2
    assert (
        "train.jsonl" in corrupt.stderr and "sha256" in corrupt.stderr and "Traceback" not in corrupt.stderr
    )

    replaced = generate(
        tmp_path,
        "--systems",
        "double_integrator",
        "--total-samples",
        "10",
        "--dataset-name",
        "test_di",
        "--overwrite",
    )
    assert replaced.returncode == 0, replaced.stderr
    assert generate(tmp_path, "--validate", "test_di").returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test_di"]  # no temporary folders left


def test_unknown_system_exits_2_listing_the_valid_names(tmp_path):
    result = generate(tmp_path, "--systems", "double_integrator,cartpole", "--total-samples", "10")
    assert result.returncode == 2
    assert "cartpole" in result.stderr and all(name in result.stderr for name in SYSTEMS)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path):
    # 12 van der Pol samples are two chunks of work, so --workers 2 really runs two processes
    common = ["--systems", "van_der_pol", "double_integrator", "--total-samples", "24", "--seed", "5"]
    one = generate(tmp_path, *common, "--dataset-name", "one", "--workers", "1")
    two = generate(tmp_path, *common, "--dataset-name", "two", "--workers", "2")
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    for split in ("train.jsonl", "eval.jsonl"):
        assert (tmp_path / "one" / split).read_bytes() == (tmp_path / "two" / split).read_bytes()
    systems = [
        json.loads(line)["system"] for line in (tmp_path / "one" / "train.jsonl").read_text().splitlines()
    ]
    assert systems.count("van_der_pol") == systems.count("double_integrator") == 11


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--systems", "pendulum", "--total-samples", "10", "--train-samples", "5"], "cannot be combined"),
        (["--systems", "pendulum", "--train-samples", "5"], "go together"),
        (["--systems", "pendulum", "--split-ratio", "1.5"], r"--split-ratio 1.5: .*generate.split_ratio"),
        (["--systems", "pendulum", "--total-samples", "1"], r"--total-samples 1: .*minimum of 2"),
        (["--total-samples", "10"], "no systems given"),
        (
            ["--systems", "pendulum", "van_der_pol", "double_integrator", "--total-samples", "20"],
            "each of the 3 systems",
        ),
        (["--systems", "double_integrator", "--total-samples", "30000"], "holds only 25920 distinct states"),
        (["--systems", "pendulum", "--decimals", "9"], "--decimals 9"),
        (["--validate", "nothing-here"], "no dataset folder"),
    ],
)
def test_bad_usage_is_refused_before_any_work(tmp_path, args, message):
    main = load_script("generate_data").main
    with pytest.raises(UsageError, match=message):
        main(["--output-dir", str(tmp_path), *args])


# ---------------------------------------------------------------- flags are shorthands for config keys


def resolved(*argv):
    script = load_script("generate_data")
    return script.resolve_generate_config(script.parse_args(list(argv)))


def test_without_flags_the_settings_are_the_schema_defaults():
    from lib.common.config import load_schema, repo_path, schema_defaults

    cfg = resolved()
    defaults = schema_defaults(load_schema("control"))
    assert cfg["generate"] == defaults["generate"]
    assert cfg["generate"]["workers"] == 2 and cfg["seed"] == defaults["seed"]
    assert repo_path(cfg["data"]["datasets_dir"]) == ROOT / "datasets"


def test_each_flag_equals_its_key_value_override(tmp_path):
    flags = ["--systems", "double_integrator", "van_der_pol", "--train-samples", "6", "--eval-samples", "4",
             "--dataset-name", "x", "--seed", "5", "--output-dir", str(tmp_path), "--decimals", "3",
             "--workers", "1", "--wide"]  # fmt: skip
    keys = ["generate.systems=double_integrator,van_der_pol", "generate.train_samples=6", "generate.eval_samples=4",
            "data.dataset_name=x", "seed=5", f"data.datasets_dir={tmp_path}", "generate.decimals=3",
            "generate.workers=1", "generate.wide=true"]  # fmt: skip
    assert resolved(*flags) == resolved(*keys)
    assert resolved("--total-samples", "30", "--split-ratio", "0.8") == resolved(
        "generate.total_samples=30", "generate.split_ratio=0.8"
    )


def test_precedence_defaults_file_flags_key_value(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text("generate:\n  decimals: 3\n  workers: 1\nseed: 7\n")
    cfg = resolved("--config", str(config))
    assert (cfg["generate"]["decimals"], cfg["generate"]["workers"], cfg["seed"]) == (
        3,
        1,
        7,
    )  # file > schema
    cfg = resolved("--config", str(config), "--decimals", "4")
    assert (cfg["generate"]["decimals"], cfg["generate"]["workers"]) == (4, 1)  # flag > file
    cfg = resolved("--config", str(config), "--decimals", "4", "generate.decimals=5")
    assert cfg["generate"]["decimals"] == 5  # key=value > flag


def test_a_config_file_makes_the_dataset_and_info_records_the_resolved_config(tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text(
        f"data:\n  dataset_name: cfg_di\n  datasets_dir: {tmp_path / 'ds'}\n"
        "generate:\n  systems: [double_integrator]\n  train_samples: 3\n  eval_samples: 2\n  workers: 1\n"
    )
    result = run_python([SCRIPT, "--config", str(config), "seed=4"])
    assert result.returncode == 0, result.stderr
    info = json.loads((tmp_path / "ds" / "cfg_di" / "info.json").read_text())
    assert info["counts"] == {"train": 3, "eval": 2} and info["seed"] == 4
    assert info["config"]["generate"]["systems"] == ["double_integrator"] and info["config"]["seed"] == 4


def test_bad_flag_and_override_values_exit_2_naming_the_flag_or_key(tmp_path):
    result = generate(tmp_path, "--systems", "double_integrator", "--workers", "0")
    assert result.returncode == 2 and "--workers 0" in result.stderr and "generate.workers" in result.stderr
    result = generate(tmp_path, "--systems", "double_integrator", "generate.workrs=2")
    assert result.returncode == 2 and "did you mean 'generate.workers'" in result.stderr
    assert "Traceback" not in result.stderr


def test_bench_quick_run_writes_json_and_table(tmp_path):
    main = load_script("bench/data").main
    out = tmp_path / "bench"
    assert (
        main(
            [
                "--samples",
                "40",
                "--nonlinear-samples",
                "2",
                "--quality-samples",
                "40",
                "--output-dir",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads((out / "bench.json").read_text())
    assert set(result["generation"]) == set(SYSTEMS)
    assert result["baseline"]["samples"] == 40 and result["baseline"]["samples_per_s"] > 0
    quality = result["baseline_quality"]["double_integrator"]["wide"]
    assert quality["old"]["median"] >= 1.0 - 1e-12 and quality["ours_printed"]["max"] >= 1.0
    assert "J_baseline / J*" in (out / "bench.md").read_text()


def test_prompt_and_reasoning_styles_change_the_text_not_the_ground_truth(tmp_path):
    common = [
        "--systems",
        "double_integrator_short",
        "--train-samples",
        "6",
        "--eval-samples",
        "2",
        "--seed",
        "3",
    ]
    full = generate(tmp_path, *common, "--dataset-name", "full")
    lean = generate(
        tmp_path, *common, "--dataset-name", "lean", "--prompt-style", "compact", "--reasoning", "none"
    )
    assert full.returncode == 0 and lean.returncode == 0, full.stderr + lean.stderr
    info = json.loads((tmp_path / "lean" / "info.json").read_text())
    assert (info["prompt_style"], info["reasoning"]) == ("compact", "none")
    assert (info["config"]["generate"]["prompt_style"], info["config"]["generate"]["reasoning"]) == (
        "compact",
        "none",
    )
    for split in ("train.jsonl", "eval.jsonl"):
        a = [json.loads(line) for line in (tmp_path / "full" / split).read_text().splitlines()]
        b = [json.loads(line) for line in (tmp_path / "lean" / split).read_text().splitlines()]
        truth = ("id", "x0", "u_opt", "J_opt", "J_label", "J_zero", "x_final_opt")
        assert [[r[k] for k in truth] for r in a] == [[r[k] for k in truth] for r in b]
        assert all(r["prompt"][1]["content"].startswith("x_0 = (") for r in b)
        assert all(r["completion"][0]["content"].startswith("<REASONING></REASONING><CONTROLS>") for r in b)
    check = generate(tmp_path, "--validate", "lean")
    assert check.returncode == 0, check.stderr
    bad = generate(tmp_path, *common, "--dataset-name", "x", "--reasoning", "long")
    assert bad.returncode == 2 and "generate.reasoning" in bad.stderr and "brief" in bad.stderr


# ---------------------------------------------------------------- --overwrite replaces only a dataset
# (issue 21: it deleted a folder of the user's notes; the rule: lib/common/outputs.py)

SMALL = ["--systems", "double_integrator", "--total-samples", "10", "--dataset-name", "notes"]


def tree(top: Path) -> dict[str, object]:
    """Every path under top (links not followed) with its content, where a link points, or 'dir'."""
    found: dict[str, object] = {}
    for path in sorted(top.rglob("*")):
        rel = path.relative_to(top).as_posix()
        found[rel] = os.readlink(path) if path.is_symlink() else "dir" if path.is_dir() else path.read_bytes()
    return found


def occupy(out: Path, kind: str) -> None:
    """Put something that is not (only) a dataset where --dataset-name notes would go."""
    if kind == "a folder of notes":
        (out / "notes" / "sub").mkdir(parents=True)
        (out / "notes" / "thesis.tex").write_text("x")
    elif kind == "a dataset holding a file of the user's":
        assert call_script("generate_data", ["--output-dir", str(out), *SMALL]) == 0
        (out / "notes" / "README.md").write_text("what this dataset was for")
    elif kind == "a file":
        (out / "notes").write_text("x")
    else:  # a link to a folder of the user's elsewhere
        (out.parent / "elsewhere").mkdir()
        (out.parent / "elsewhere" / "keep.txt").write_text("x")
        (out / "notes").symlink_to(out.parent / "elsewhere")


@pytest.mark.parametrize(
    "kind", ["a folder of notes", "a dataset holding a file of the user's", "a file", "a link"]
)
def test_overwrite_refuses_what_is_not_a_dataset_and_touches_nothing(tmp_path, capsys, kind):
    out = tmp_path / "datasets"
    out.mkdir()
    occupy(out, kind)
    before = tree(tmp_path)
    capsys.readouterr()
    assert call_script("generate_data", ["--output-dir", str(out), *SMALL, "--overwrite"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and str(out / "notes") in err and "fix:" in err, err
    assert tree(tmp_path) == before


def test_overwrite_replaces_an_empty_folder(tmp_path):
    (tmp_path / "notes").mkdir()
    assert call_script("generate_data", ["--output-dir", str(tmp_path), *SMALL, "--overwrite"]) == 0
    assert sorted(p.name for p in (tmp_path / "notes").iterdir()) == [
        "eval.jsonl",
        "info.json",
        "train.jsonl",
    ]
