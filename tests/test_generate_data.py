"""scripts/generate_data.py as a user runs it (subprocess from the repo root) and scripts/bench.py."""

from __future__ import annotations

import json

import pytest
from conftest import load_script, run_python

from lib.common.errors import UsageError
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
        (["--systems", "pendulum", "--split-ratio", "1.5"], "not between 0 and 1"),
        (["--systems", "pendulum", "--total-samples", "1"], "too small"),
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


def test_bench_quick_run_writes_json_and_table(tmp_path):
    main = load_script("bench").main
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
