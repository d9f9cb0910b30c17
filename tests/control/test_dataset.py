"""Datasets on disk (lib/control/dataset.py, dataset_format.py, dataset_checks.py): the records, their
certificates, atomic writes and checked loading."""

from __future__ import annotations

import hashlib
import json
import platform
import sys

import numpy as np
import pytest

import lib.control.dataset as dataset
from lib.common.errors import UsageError
from lib.control.dataset import build_dataset, sample_initial_states, split_evenly, write_dataset
from lib.control.dataset_checks import validate_dataset
from lib.control.dataset_format import read_split
from lib.control.references import KKT_TOL_LINEAR
from lib.control.systems import SYSTEMS, get_system, simulate, trajectory_cost


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A dataset with every system: 4 train + 2 eval records each (nonlinear solves are the slow part)."""
    out = tmp_path_factory.mktemp("datasets")
    lines, info = build_dataset(list(SYSTEMS), 4 * len(SYSTEMS), 2 * len(SYSTEMS), seed=3, wide=True)
    return write_dataset(out, "mixed", lines, info)


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    out = tmp_path_factory.mktemp("datasets")
    lines, info = build_dataset(["double_integrator", "two_mass_spring"], 400, 100, seed=4, wide=True)
    return write_dataset(out, "linear", lines, info)


def test_every_linear_record_is_a_certified_optimum(linear):
    rng = np.random.default_rng(0)
    for split in ("train", "eval"):
        for name, records in _by_system(read_split(linear, split)).items():
            system = get_system(name)
            x0 = np.array([r["x0"] for r in records])
            u = np.array([r["u_opt"] for r in records])
            J = np.array([r["J_opt"] for r in records])
            assert np.all((u >= system.u_min) & (u <= system.u_max))
            np.testing.assert_array_equal(trajectory_cost(system, simulate(system, x0, u), u), J)
            assert max(r["kkt_residual"] for r in records) <= KKT_TOL_LINEAR
            for scale in (1e-3, 0.1):
                moved = np.clip(u + scale * rng.standard_normal(u.shape), system.u_min, system.u_max)
                assert np.all(trajectory_cost(system, simulate(system, x0, moved), moved) >= J - 1e-9 * J)


def _by_system(records):
    groups = {}
    for record in records:
        groups.setdefault(record["system"], []).append(record)
    return groups


def test_records_mix_systems_evenly_and_keep_train_and_eval_apart(mixed):
    info = json.loads((mixed / "info.json").read_text())
    train, evaluation = read_split(mixed, "train"), read_split(mixed, "eval")
    assert [len(v) for v in _by_system(train).values()] == [4] * len(SYSTEMS)
    assert [len(v) for v in _by_system(evaluation).values()] == [2] * len(SYSTEMS)
    for name in SYSTEMS:
        seen = {tuple(r["x0"]) for r in train if r["system"] == name}
        assert not seen & {tuple(r["x0"]) for r in evaluation if r["system"] == name}
        assert info["systems"][name]["J_floor"] > 0
    assert validate_dataset(mixed) == {"train": 4 * len(SYSTEMS), "eval": 2 * len(SYSTEMS)}
    assert (
        info["files"]["train.jsonl"]["sha256"]
        == hashlib.sha256((mixed / "train.jsonl").read_bytes()).hexdigest()
    )


def test_huggingface_datasets_reads_the_files_as_they_are(mixed, tmp_path):
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "json",
        data_files={split: str(mixed / f"{split}.jsonl") for split in ("train", "eval")},
        cache_dir=str(tmp_path / "hf"),
    )
    assert loaded["train"].num_rows == 4 * len(SYSTEMS)
    row = loaded["train"][0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"] and row["completion"][0][
        "role"
    ] == "assistant"
    assert set(loaded["train"].unique("system")) == set(SYSTEMS)
    assert loaded["train"].features["J_opt"].dtype == "float64"
    assert loaded["train"].features["bounds"]["u_min"].dtype == "float64"


def test_initial_states_are_distinct_on_the_grid_and_never_the_target():
    system = get_system("double_integrator")
    x0 = sample_initial_states(system, 500, seed=1)
    assert len({tuple(x) for x in x0}) == 500
    np.testing.assert_array_equal(x0, np.round(x0 * 100) / 100)
    assert np.all(np.abs(x0) <= 0.8)
    np.testing.assert_array_equal(x0, sample_initial_states(system, 500, seed=1))
    assert not np.array_equal(x0, sample_initial_states(system, 500, seed=2))
    # the whole 1-decimal grid of [-0.8, 0.8]^2 is 17 x 17 = 289 states, 288 without the target
    every = sample_initial_states(system, 288, seed=1, decimals=1)
    assert len({tuple(x) for x in every}) == 288 and not np.any(np.all(every == 0, axis=1))
    with pytest.raises(UsageError, match="holds only 288 distinct states"):
        sample_initial_states(system, 289, seed=1, decimals=1)


def test_split_evenly():
    assert split_evenly(10, 3) == [4, 3, 3]
    assert split_evenly(2, 4) == [1, 1, 0, 0]


def test_a_failed_write_leaves_the_old_dataset_and_no_partial_folder(tmp_path, monkeypatch):
    lines, info = build_dataset(["double_integrator"], 5, 2, seed=0)
    path = write_dataset(tmp_path, "d", lines, info)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    real = dataset.write_bytes_atomic

    def fail_on_info(target, data, **kwargs):
        if target.name == "info.json":
            raise OSError("disk full")
        real(target, data, **kwargs)

    monkeypatch.setattr(dataset, "write_bytes_atomic", fail_on_info)
    other, other_info = build_dataset(["double_integrator"], 5, 2, seed=1)
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path, "d", other, other_info, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    with pytest.raises(UsageError, match="already exists"):
        write_dataset(tmp_path, "d", other, other_info)


def test_loading_refuses_a_changed_file_and_names_it(tmp_path):
    lines, info = build_dataset(["double_integrator"], 5, 2, seed=0)
    path = write_dataset(tmp_path, "d", lines, info)
    data = bytearray((path / "eval.jsonl").read_bytes())
    data[10] ^= 1
    (path / "eval.jsonl").write_bytes(bytes(data))
    read_split(path, "train")  # the other split is intact
    with pytest.raises(UsageError) as err:
        read_split(path, "eval")
    assert "eval.jsonl" in str(err.value) and "sha256" in str(err.value) and "--overwrite" in err.value.fix


def test_validation_re_simulates_labels(tmp_path):
    lines, info = build_dataset(["double_integrator"], 5, 2, seed=0)
    record = json.loads(lines["train"][2])
    record["J_opt"] *= 0.999  # a label that lies about its cost, with a matching checksum
    lines["train"][2] = json.dumps(record, separators=(",", ":"))
    path = write_dataset(tmp_path, "d", lines, info)
    read_split(path, "train")  # shape and checksum are fine ...
    with pytest.raises(UsageError, match="'J_opt' is not the simulated cost of u_opt"):
        validate_dataset(path)  # ... the simulator is not fooled


def test_loading_checks_the_record_format(tmp_path):
    lines, info = build_dataset(["double_integrator"], 5, 2, seed=0)
    record = json.loads(lines["train"][0])
    record["x0"] = [0, 1]  # ints where floats belong: a column type the json loader would have to guess
    lines["train"][0] = json.dumps(record)
    path = write_dataset(tmp_path, "d", lines, info)
    with pytest.raises(UsageError, match="'x0' should be 2 floats"):
        read_split(path, "train")


def _to_9_decimals(value):
    """Every float of a record rounded to 9 decimals (-0.0 as 0.0): what a fixed system's builder must keep."""
    if isinstance(value, float):
        return round(value, 9) + 0.0
    if isinstance(value, list):
        return [_to_9_decimals(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_9_decimals(v) for k, v in value.items()}
    return value


@pytest.mark.skipif(
    not (sys.platform == "linux" and platform.machine() == "x86_64"),
    reason="pinned on the CI platform (linux x86_64): another BLAS or IPOPT build may differ past 9 decimals",
)
def test_the_fixed_systems_datasets_keep_their_records():
    # pinned before families existed (issue 19): the builders now take every parameter, and a fixed system
    # must still produce the records it did for the same seed. The text (prompts, printed labels) exactly;
    # the solver's full-precision floats to 9 decimals: their last bits follow OpenBLAS's kernels, so the
    # raw bytes differ between CPUs (OPENBLAS_CORETYPE=Zen or Haswell gives one digest, SkylakeX another;
    # this one is the same under all three), and the KKT residual (~1e-13) is noise
    lines, _ = build_dataset(list(SYSTEMS), 10, 5, seed=3)
    records = [_to_9_decimals(json.loads(line)) for line in lines["train"] + lines["eval"]]
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    assert digest == "c5f2443c3bff509b3c45a3985de2b1f87f1c4082b684d8f2de546dd73a47aa9c"
