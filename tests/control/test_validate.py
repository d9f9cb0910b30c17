"""Validating and loading datasets that were changed after they were written, with their checksums recomputed
(lib/control/dataset_checks.py validate_dataset; lib/control/dataset_format.py read_info, read_split): each
change is found and named."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from lib.common.errors import UsageError
from lib.control.dataset import build_dataset, write_dataset
from lib.control.dataset_checks import validate_dataset
from lib.control.dataset_format import read_info, read_split
from lib.control.systems import get_system, simulate, trajectory_cost


@pytest.fixture
def dataset(tmp_path) -> Path:
    lines, info = build_dataset(["double_integrator", "double_integrator_short"], 10, 4, seed=0)
    return write_dataset(tmp_path, "d", lines, info)


def edit_info(path: Path, change: Callable[[dict], None]) -> None:
    info = json.loads((path / "info.json").read_text())
    change(info)
    (path / "info.json").write_text(json.dumps(info, indent=2))


def rewrite(path: Path, split: str, lines: list[str]) -> None:
    """Replace a split's file and make info.json's sha256 / bytes / records match it again."""
    data = "".join(line + "\n" for line in lines).encode()
    (path / f"{split}.jsonl").write_bytes(data)

    def update(info):
        entry = info["files"][f"{split}.jsonl"]
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data), records=len(lines))

    edit_info(path, update)


def edit_record(path: Path, split: str, index: int, change: Callable[[dict], None]) -> dict:
    """Change record `index` (0-based) of a split in place, checksums recomputed; returns the record."""
    lines = (path / f"{split}.jsonl").read_text().splitlines()
    record = json.loads(lines[index])
    change(record)
    lines[index] = json.dumps(record)  # NaN / Infinity as Python's json writes (and reads) them
    rewrite(path, split, lines)
    return record


def refused(path: Path, *fragments: str, check: Callable = validate_dataset) -> UsageError:
    with pytest.raises(UsageError) as err:
        check(path)
    message = str(err.value)
    for fragment in fragments:
        assert fragment in message, message
    assert "regenerate" in err.value.fix
    return err.value


def test_an_untouched_dataset_validates(dataset):
    assert validate_dataset(dataset) == {"train": 10, "eval": 4}


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("J_opt", float("nan"), "'J_opt'"),
        ("J_opt", float("inf"), "'J_opt'"),
        ("J_zero", float("nan"), "'J_zero'"),
        ("J_label", float("-inf"), "'J_label'"),
        ("kkt_residual", float("nan"), "'kkt_residual'"),
        ("u_opt", 7, "'u_opt[7]'"),
        ("x_final_opt", 1, "'x_final_opt[1]'"),
    ],
)
def test_non_finite_numbers_are_refused_by_name(dataset, field, value, named):
    def change(record):
        if isinstance(record[field], list):
            record[field][value] = float("nan")
        else:
            record[field] = value

    record = edit_record(dataset, "train", 2, change)
    refused(dataset, "train.jsonl line 3", record["id"], named, "not a finite number")


def test_the_x0_the_prompt_shows_must_be_the_records(dataset):
    def change(record):
        user = record["prompt"][1]
        user["content"] = re.sub(r"x_0 = \([^)]*\)", "x_0 = (0.11, -0.22)", user["content"])

    record = edit_record(dataset, "eval", 1, change)
    refused(dataset, "eval.jsonl line 2", record["id"], "'prompt' shows x_0 = (0.11, -0.22)", "'x0'")


def test_repeated_ids_are_refused(dataset):
    first = json.loads((dataset / "train.jsonl").read_text().splitlines()[0])
    edit_record(dataset, "eval", 0, lambda r: r.update(id=first["id"]))
    refused(dataset, "eval.jsonl line 1", "'id' repeats the record at train.jsonl line 1")


def test_a_self_consistent_but_suboptimal_optimum_is_refused(dataset):
    # u_opt moved off the optimum, with J_opt and x_final_opt recomputed so that they agree with it:
    # only solving the problem again can tell
    system = get_system("double_integrator")

    def change(record):
        u = np.array(record["u_opt"])
        u[10] = np.clip(u[10] + 1e-3, system.u_min, system.u_max)
        states = simulate(system, np.array([record["x0"]]), u[None])
        record["u_opt"] = u.tolist()
        record["J_opt"] = float(trajectory_cost(system, states, u[None])[0])
        record["x_final_opt"] = states[0, -1].tolist()

    record = edit_record(dataset, "train", 0, change)
    assert record["J_label"] >= record["J_opt"]  # nothing else gives it away
    refused(dataset, "train.jsonl line 1", record["id"], "'u_opt' is not the optimum")


def test_a_lower_claimed_optimum_is_refused(dataset):
    # J_opt lower than J* but the cost of u_opt: caught by re-simulation (the test above moves both)
    record = edit_record(dataset, "train", 4, lambda r: r.update(J_opt=r["J_opt"] * (1 - 1e-6)))
    refused(dataset, "train.jsonl line 5", record["id"], "'J_opt'")


def test_a_dataset_without_systems_is_refused(tmp_path):
    # what `generate_data.py --systems ""` wrote: empty files, info.json claiming 9 + 1 records
    info = {"decimals": 2, "counts": {"train": 9, "eval": 1}, "systems": {}}
    path = write_dataset(tmp_path, "empty", {"train": [], "eval": []}, info)
    refused(path, "info.json 'systems'")
    refused(path, "info.json 'systems'", check=lambda p: read_split(p, "train"))
    with pytest.raises(UsageError, match="no systems given"):
        build_dataset([], 9, 1, seed=0)


def test_record_counts_must_match_info_json(dataset):
    lines = (dataset / "train.jsonl").read_text().splitlines()
    rewrite(dataset, "train", lines[:-1])  # 'files' agrees (rewrite updates it), 'counts' does not
    refused(dataset, "train.jsonl holds 9 records", "'counts' says 10")
    edit_info(dataset, lambda info: info["counts"].update(train=9))
    refused(dataset, "train.jsonl holds 4 double_integrator_short records", "'systems' says 5")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda info: info.update(files=["train.jsonl", "eval.jsonl"]), "'files' should be a table"),
        (lambda info: info["files"].update({"eval.jsonl": "abc"}), "'files' has no table for eval.jsonl"),
        (lambda info: info["files"]["train.jsonl"].update(sha256=None), "'files.train.jsonl.sha256'"),
        (lambda info: info.update(decimals="2"), "'decimals'"),
        (
            lambda info: info["systems"]["double_integrator"].pop("J_floor"),
            "'systems.double_integrator.J_floor'",
        ),
        (lambda info: info.update(counts=None), "'counts'"),
    ],
)
def test_a_malformed_info_json_is_a_usage_error_when_loading(dataset, change, named):
    edit_info(dataset, change)
    for check in (read_info, lambda p: read_split(p, "train"), validate_dataset):
        refused(dataset, "info.json", named, check=check)


def test_loading_refuses_a_record_of_a_system_info_json_lacks(dataset):
    # beyond the first records (whose shape loading checks), a record naming a system info.json lacks
    lines = (dataset / "train.jsonl").read_text().splitlines()
    lines.append(lines[-1].replace('"system":"double_integrator_short"', '"system":"pendulum"'))
    rewrite(dataset, "train", lines)
    refused(dataset, "train.jsonl line 11", "'system' 'pendulum'", check=lambda p: read_split(p, "train"))


# Every promise a dataset makes (issue 21, row 7): the label promise, and what info.json derives from the
# records, which has no checksum of its own


def test_a_label_replaced_by_zeros_with_its_cost_recomputed_is_refused(dataset):
    # the adversarial case: controls printed as 0.00 x N, J_label set to their simulated cost, checksums
    # recomputed; everything agrees with everything except the promise that the label is near the optimum
    system = get_system("double_integrator_short")

    def change(record):
        zeros = np.zeros((1, system.steps))
        text = record["completion"][0]["content"]
        shown = re.search(r"<CONTROLS>(.*)</CONTROLS>", text).group(1)
        record["completion"][0]["content"] = text.replace(shown, ", ".join(["0.00"] * system.steps))
        states = simulate(system, np.array([record["x0"]]), zeros)
        record["J_label"] = float(trajectory_cost(system, states, zeros)[0])

    lines = (dataset / "train.jsonl").read_text().splitlines()
    index = next(i for i, line in enumerate(lines) if '"system":"double_integrator_short"' in line)
    record = edit_record(dataset, "train", index, change)
    assert record["J_label"] > 1.5 * record["J_opt"]
    refused(dataset, f"train.jsonl line {index + 1}", record["id"], "'completion'")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("J_floor", 1e6),  # would make every answer's gap ~0 (success@1% for doing nothing)
        ("median_J_opt", 123.0),
        ("worst_label_gap", 0.0),
        ("worst_kkt_residual", 0.0),
        ("R", 0.5),  # a system constant the records were not made with
        ("x0_box", [[-9.0, 9.0], [-9.0, 9.0]]),
    ],
)
def test_info_json_claims_are_derived_again_from_the_records(dataset, key, value):
    edit_info(dataset, lambda info: info["systems"]["double_integrator"].update({key: value}))
    refused(dataset, f"systems.double_integrator.{key}")


def test_a_byte_count_that_disagrees_with_the_file_is_refused(dataset):
    edit_info(dataset, lambda info: info["files"]["eval.jsonl"].update(bytes=12))
    refused(dataset, "eval.jsonl has", "'files' says 12")


def test_prompt_and_completion_text_are_written_again_and_compared(dataset):
    record = edit_record(
        dataset, "train", 1, lambda r: r["prompt"][1].update(content=r["prompt"][1]["content"] + " Ignore Q.")
    )
    refused(dataset, "train.jsonl line 2", record["id"], "'prompt' is not the full prompt")
    edit_record(dataset, "train", 1, lambda r: r["prompt"][1].update(content=r["prompt"][1]["content"][:-10]))
    record = edit_record(
        dataset,
        "train",
        3,
        lambda r: r["completion"][0].update(content=r["completion"][0]["content"].replace("J* = ", "J* = 1")),
    )
    refused(dataset, "train.jsonl line 4", record["id"], "'completion' is not the text")


@pytest.mark.parametrize("name", ["info.json", "train.jsonl"])
def test_a_folder_where_a_file_should_be_is_refused(dataset, name):
    (dataset / name).unlink()
    (dataset / name).mkdir()
    refused(dataset, f"{name} is a folder")
    if name == "train.jsonl":
        refused(dataset, f"{name} is a folder", check=lambda p: read_split(p, "train"))


def test_deep_nesting_is_refused_not_a_recursion_error(dataset):
    deep = "[" * 100_000 + "]" * 100_000
    (dataset / "info.json").write_text(deep)
    refused(dataset, "info.json nests deeper")
    refused(dataset, "info.json nests deeper", check=read_info)


def test_a_deeply_nested_record_is_refused_not_a_recursion_error(dataset):
    lines = (dataset / "eval.jsonl").read_text().splitlines()
    rewrite(dataset, "eval", [*lines[:-1], "[" * 100_000 + "]" * 100_000])
    refused(dataset, f"eval.jsonl line {len(lines)} nests deeper")
