"""Baselines fitted on a train split (lib/control/baselines.py), coverage and the splits of a dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import call_script, make_dataset

from lib.control.baselines import (
    BASELINES,
    dataset_baselines,
    fit_system,
    label_controls,
    problem_features,
)
from lib.control.dataset import grid_problems, split_initial_states
from lib.control.dataset_format import load_records, read_info
from lib.control.metrics import evaluate_controls
from lib.control.systems import get_system

DI, SHORT = get_system("double_integrator"), get_system("double_integrator_short")


def inside(box, x) -> bool:
    return all(lo - 1e-12 <= v <= hi + 1e-12 for (lo, hi), v in zip(box, x, strict=True))


def unconstrained(records: list[dict]) -> list[dict]:
    """The problems whose optimum touches no bound: there the optimum is the unconstrained LQ solution, linear
    in x_0 (the set of such x_0 is a polytope around the target)."""
    return [r for r in records if np.abs(r["u_opt"]).max() < DI.u_max - 1e-6]


@pytest.fixture(scope="module")
def linear(tmp_path_factory):
    path = make_dataset(tmp_path_factory.mktemp("linear"), "lin", ["double_integrator"], 240, 40)
    return unconstrained(load_records(path, "train")[0]), unconstrained(load_records(path, "eval")[0])


def test_affine_is_exact_where_the_optimum_is_affine_in_x0(linear):
    train, evaluation = linear
    assert len(train) >= 40 and len(evaluation) >= 5
    fitted = fit_system("double_integrator", train, decimals=2)
    u = fitted.predict("affine", problem_features(evaluation))
    optimum = np.array([r["u_opt"] for r in evaluation])
    assert np.abs(u - optimum).max() <= 0.01 + 1e-9  # the optimum, to within one step of the printed grid
    x0, J = problem_features(evaluation), np.array([r["J_opt"] for r in evaluation])
    assert evaluate_controls(DI, x0, u, J, evaluation[0]["J_floor"]).success[0.01].all()


def test_nearest_answers_a_training_problem_with_its_own_label(linear):
    train, _ = linear
    fitted = fit_system("double_integrator", train, decimals=2)
    assert np.array_equal(fitted.predict("nearest", problem_features(train)), label_controls(train))
    assert np.array_equal(fitted.predict("knn", problem_features(train[:5])), label_controls(train[:5]))
    assert np.allclose(fitted.nearest_distances(problem_features(train)), 0.0)


def test_answers_are_clipped_and_rounded_like_a_label(tmp_path):
    path = make_dataset(tmp_path, "short", ["double_integrator_short"], 120, 10)
    train = load_records(path, "train")[0]
    fitted = fit_system("double_integrator_short", train, decimals=2)
    far = np.array([[5.0, -5.0], [-7.0, 3.0]])  # far outside the box: a linear map would leave the bounds
    for name in fitted.available():
        u = fitted.predict(name, far)
        assert (np.abs(u) <= SHORT.u_max).all() and np.allclose(u * 100, np.round(u * 100))


def test_too_few_train_records_say_which_baselines_are_missing_and_why(linear):
    train, _ = linear
    fitted = fit_system("double_integrator", train[:3], decimals=2)
    assert set(fitted.missing) == {"knn", "mlp"} and "at least 10 train records" in fitted.missing["knn"]
    assert fitted.available() == ["nearest", "affine"]


def test_fitted_baselines_are_cached_by_the_train_file_and_predict_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTROL_LLM_CACHE", str(tmp_path / "cache"))
    path = make_dataset(tmp_path, "cache", ["double_integrator_short"], 120, 10)
    info, evaluation = read_info(path), load_records(path, "eval")[0]
    first = dataset_baselines(path, info, ["double_integrator_short"])["double_integrator_short"]
    (cached,) = (tmp_path / "cache" / "baselines").glob("*.npz")
    again = dataset_baselines(path, info, ["double_integrator_short"])["double_integrator_short"]
    for name in BASELINES:
        x = problem_features(evaluation)
        assert np.array_equal(first.predict(name, x), again.predict(name, x)), name
    assert again.k == first.k and again.fit_seconds == first.fit_seconds
    cached.write_bytes(b"not an npz")  # a damaged cache is fitted again, not trusted
    assert dataset_baselines(path, info, ["double_integrator_short"])["double_integrator_short"].k == first.k


# ---------------------------------------------------------------- coverage and splits


def test_coverage_counts_the_grid_by_hand():
    # decimals 1: the default box [-0.8, 0.8]^2 holds 17 x 17 points, less the target (0, 0): 288
    assert grid_problems(SHORT, 1) == 17 * 17 - 1
    # the ring out to the wide box [-2, 2]^2: 41 x 41 - 1 - 288
    assert grid_problems(SHORT, 1, SHORT.x0_box_wide, SHORT.x0_box) == 41 * 41 - 1 - 288
    _, _, coverage = split_initial_states(SHORT, 72, 10, 0, 1, False, "random", 0.1)
    assert coverage["problems"] == 288 and coverage["train_fraction"] == pytest.approx(72 / 288)


@pytest.mark.parametrize("split", ["random", "extrapolation", "sparse"])
def test_train_and_eval_are_disjoint_and_drawn_from_the_regions_stated(split):
    train, evaluation, coverage = split_initial_states(SHORT, 28, 40, 3, 1, False, split, 0.1)
    assert not {tuple(x) for x in train} & {tuple(x) for x in evaluation}
    assert all(inside(SHORT.x0_box, x) for x in train)
    if split == "extrapolation":
        assert all(inside(SHORT.x0_box_wide, x) and not inside(SHORT.x0_box, x) for x in evaluation)
        assert coverage["eval_region"] == "wide box minus the default box"
    else:
        assert all(inside(SHORT.x0_box, x) for x in evaluation)


def test_a_sparse_split_refuses_more_than_its_fraction_of_the_grid(tmp_path):
    path = tmp_path / "datasets"
    code = call_script("generate_data", ["--systems", "double_integrator_short", "--decimals", "1",
                       "--train-samples", "29", "--eval-samples", "5", "--split", "sparse", "--dataset-name",
                       "s", "--output-dir", str(path)])  # fmt: skip
    assert code == 2 and not (path / "s").exists()  # 10% of 288 is 28


def test_validate_checks_the_split_promise(tmp_path):
    path = make_dataset(tmp_path, "ring", ["double_integrator_short"], 30, 10, "--split", "extrapolation")
    info = read_info(path)
    assert info["split"] == {"kind": "extrapolation"}
    assert (
        call_script("generate_data", ["--validate", "ring", "--output-dir", str(tmp_path / "datasets")]) == 0
    )
    info["systems"]["double_integrator_short"]["coverage"]["problems"] += 1  # the grid miscounted
    (path / "info.json").write_text(json.dumps(info))
    assert (
        call_script("generate_data", ["--validate", "ring", "--output-dir", str(tmp_path / "datasets")]) == 2
    )
