"""Families (lib/control/families.py): each record its own problem, stated in its prompt, labelled with the
exact optimum of exactly that problem (issue 19)."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
from test_answer import _evaluate_rhs, rebuild_problem

from lib.control.answer import build_prompt
from lib.control.dataset import build_dataset, write_dataset
from lib.control.dataset_checks import validate_dataset
from lib.control.families import FAMILIES, family_system, record_system
from lib.control.references import linear_optima
from lib.control.systems import SYSTEMS, System, rk4_step, simulate, trajectory_cost


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_records(request) -> list[dict]:
    """Three train and two eval records of one family, made by the dataset builder."""
    lines, info = build_dataset([request.param], 3, 2, seed=5, prompt_style="compact")
    return [json.loads(line) for line in lines["train"] + lines["eval"]]


def test_records_differ_in_every_listed_parameter():
    lines, _ = build_dataset(["double_integrator_family"], 40, 10, seed=1)
    params = [json.loads(line)["params"] for line in lines["train"] + lines["eval"]]
    for name in FAMILIES["double_integrator_family"].ranges:
        assert len({p[name] for p in params}) > 3, name


def text_system(problem: dict, like: System) -> System:
    """A System built from what the compact text states (dynamics, horizon, bounds, cost), nothing else."""
    fields = {
        "name": "from_text", "title": "", "description": "", "state_names": problem["state_names"],
        "state_units": ("",) * len(problem["state_names"]), "control_name": "", "control_unit": "",
        "dt": problem.get("dt", 1.0), "steps": problem["steps"], "u_min": problem["bounds"][0],
        "u_max": problem["bounds"][1], "Q": problem["Q"], "R": problem["R"], "Qf": problem["Qf"],
        "x_target": problem["x_target"], "x0_box": like.x0_box, "x0_box_wide": like.x0_box_wide,
        "A_cont": like.A_cont, "B_cont": like.B_cont,
    }  # fmt: skip
    if "A" in problem:
        return System(**fields, A=problem["A"], B=problem["B"])
    names = problem["state_names"]
    expressions = problem["rhs"]

    def dynamics(x, u, ops, constants):
        return tuple(_evaluate_rhs(expressions, names, np.stack(x, axis=1), u).T)

    return System(**fields, dynamics=dynamics)


def test_the_compact_prompt_alone_rebuilds_each_records_problem_and_its_optimal_cost(family_records):
    for record in family_records:
        system = record_system(record)
        problem = rebuild_problem(record["prompt"])
        assert problem["steps"] == system.steps == record["horizon"]["steps"]
        assert problem["bounds"] == (system.u_min, system.u_max)
        np.testing.assert_array_equal(problem["x0"], record["x0"])
        rebuilt = text_system(problem, system)
        # J_opt recomputed from the text alone: the cost of the record's u_opt under the stated problem
        u = np.array([record["u_opt"]])
        J_text = trajectory_cost(rebuilt, simulate(rebuilt, problem["x0"][None], u), u)[0]
        assert J_text == pytest.approx(record["J_opt"], rel=1e-4), record["id"]
        if system.is_linear:  # and the optimum of the stated problem, solved from the text: the same J*
            J_star = linear_optima(rebuilt, problem["x0"][None])[1][0]
            assert J_star == pytest.approx(record["J_opt"], rel=1e-4), record["id"]


def test_a_family_dataset_validates_and_an_edited_parameter_is_caught(tmp_path, family_records):
    name = family_records[0]["system"]
    lines, info = build_dataset([name], 3, 2, seed=5)
    path = write_dataset(tmp_path, "fam", lines, info)
    assert validate_dataset(path) == {"train": 3, "eval": 2}
    record = json.loads(lines["train"][1])
    key = next(k for k in record["params"] if k != "steps")
    low, high = FAMILIES[name].ranges[key].low, FAMILIES[name].ranges[key].high
    record["params"][key] = (
        round((low + high) / 2 + 0.01, 2) if record["params"][key] != (low + high) / 2 else low
    )
    lines["train"][1] = json.dumps(record, separators=(",", ":"))
    edited = write_dataset(tmp_path, "edited", lines, info)  # checksums recomputed by the writer
    from lib.common.errors import UsageError

    with pytest.raises(UsageError, match=r"train.jsonl line 2"):
        validate_dataset(edited)


def test_a_member_with_the_fixed_systems_values_is_the_fixed_system():
    # the builders serve both: a member drawn at the builder's defaults (the fixed system's values) simulates
    # exactly like the fixed system
    for family in FAMILIES.values():
        defaults = inspect.signature(family.build).parameters
        member = family_system(family.name, {key: defaults[key].default for key in family.ranges})
        fixed = SYSTEMS[family.base]
        x, u = np.array([[0.3] * fixed.n]), np.array([[0.2] * fixed.steps])
        np.testing.assert_allclose(simulate(member, x, u), simulate(fixed, x, u), rtol=1e-12, atol=1e-12)
        J_member = trajectory_cost(member, simulate(member, x, u), u)
        assert J_member == pytest.approx(trajectory_cost(fixed, simulate(fixed, x, u), u), rel=1e-12)


def test_two_records_that_differ_only_in_dt_state_and_score_different_problems():
    base = {"dt": 0.3, "steps": 10, "u_max": 2.0, "q": 1.0, "r": 0.1, "qf": 10.0, "p_target": 0.0}
    slow, fast = (family_system("double_integrator_family", base | {"dt": dt}) for dt in (0.3, 0.5))
    x0 = np.array([[0.5, -0.2]])
    assert "dt = 0.3 s" in build_prompt(slow, x0[0])[1]["content"]
    assert "dt = 0.5 s" in build_prompt(fast, x0[0])[1]["content"]
    u_slow = linear_optima(slow, x0)[0]
    J_on_slow = trajectory_cost(slow, simulate(slow, x0, u_slow), u_slow)[0]
    J_on_fast = trajectory_cost(fast, simulate(fast, x0, u_slow), u_slow)[0]
    assert J_on_fast > 1.05 * linear_optima(fast, x0)[1][0]  # the slow record's optimum is not the fast one's
    assert J_on_slow == pytest.approx(linear_optima(slow, x0)[1][0])


def test_rk4_of_a_member_uses_its_own_constants():
    member = family_system("van_der_pol_family", {"mu": 2.0, "dt": 0.1, "steps": 20, "u_max": 1.0, "q": 1.0,
                                                  "r": 0.1, "qf": 10.0, "x1_target": 0.0})  # fmt: skip
    x = [np.array([0.5]), np.array([0.5])]
    stepped = rk4_step(member.rhs, x, np.array([0.0]), 0.1, np)
    fixed = rk4_step(SYSTEMS["van_der_pol"].rhs, x, np.array([0.0]), 0.1, np)
    assert not np.allclose(np.concatenate(stepped), np.concatenate(fixed))


def test_held_out_parameters_keep_a_region_of_the_ranges_for_evaluation(tmp_path):
    from lib.common.errors import UsageError

    held_out = {"dt": [0.5, 0.6]}
    lines, info = build_dataset(["double_integrator_family"], 60, 12, seed=2, split="held-out-parameters",
                                held_out=held_out)  # fmt: skip
    train = [json.loads(line)["params"]["dt"] for line in lines["train"]]
    evaluation = [json.loads(line)["params"]["dt"] for line in lines["eval"]]
    assert all(0.5 <= dt <= 0.6 for dt in evaluation) and not any(0.5 <= dt <= 0.6 for dt in train)
    assert info["split"] == {"kind": "held-out-parameters", "held_out": held_out}
    assert info["systems"]["double_integrator_family"]["coverage"]["kind"] == "continuous"
    path = write_dataset(tmp_path, "ho", lines, info)
    assert validate_dataset(path) == {"train": 60, "eval": 12}
    # an eval problem moved out of the region (its label re-solved for the new dt would still not belong)
    moved = json.loads(lines["eval"][0])
    moved["params"]["dt"] = 0.3
    lines["eval"][0] = json.dumps(moved, separators=(",", ":"))
    with pytest.raises(UsageError, match=r"eval.jsonl line 1"):
        validate_dataset(write_dataset(tmp_path, "moved", lines, info))
    for bad in ({"mu": [1, 2]}, {"dt": [0.2, 0.6]}, None):  # not a parameter; all of the range; none given
        with pytest.raises(UsageError, match="held"):
            build_dataset(
                ["double_integrator_family"], 6, 2, seed=2, split="held-out-parameters", held_out=bad
            )
    with pytest.raises(UsageError, match="fixed system"):
        build_dataset(
            ["double_integrator_short"], 6, 2, seed=2, split="held-out-parameters", held_out=held_out
        )


def test_a_config_can_replace_a_familys_ranges_and_validation_follows_the_dataset(tmp_path):
    from lib.common.errors import UsageError
    from lib.control.dataset_checks import check_existing_dataset

    ranges = {"double_integrator_family": {"steps": [10, 10], "dt": [0.1, 0.8]}}  # one horizon; dt wider
    lines, info = build_dataset(["double_integrator_family"], 40, 10, seed=4, family_ranges=ranges)
    params = [json.loads(line)["params"] for line in lines["train"] + lines["eval"]]
    assert {p["steps"] for p in params} == {10} and all(0.1 <= p["dt"] <= 0.8 for p in params)
    assert min(p["dt"] for p in params) < 0.2  # outside the family's own range, inside the config's
    assert info["systems"]["double_integrator_family"]["ranges"]["dt"] == [0.1, 0.8, "uniform", 2]
    path = write_dataset(tmp_path, "ranged", lines, info)
    assert validate_dataset(path) == {"train": 40, "eval": 10}
    # a pipeline asking for the family's own ranges does not reuse it
    settings = {"systems": None, "decimals": 2, "wide": False, "prompt_style": "full", "reasoning": "full",
                "split": "random", "sparse_fraction": 0.1, "held_out": None, "train_samples": 40,
                "eval_samples": 10, "total_samples": 50}  # fmt: skip
    check_existing_dataset(path, settings | {"family_ranges": ranges})
    with pytest.raises(UsageError, match="family_ranges"):
        check_existing_dataset(path, settings | {"family_ranges": None})
    # a record edited out of the dataset's own ranges
    record = json.loads(lines["train"][0])
    record["params"]["q"] = 5.0
    lines["train"][0] = json.dumps(record, separators=(",", ":"))
    with pytest.raises(UsageError, match=r"train.jsonl line 1.*params.q' should lie in \[0.5, 2\]"):
        validate_dataset(write_dataset(tmp_path, "edited_range", lines, info))
    for bad in (
        {"double_integrator_family": {"dt": [-0.1, 0.5]}},  # a negative step
        {"double_integrator_family": {"steps": [8.5, 12]}},  # not whole
        {"double_integrator_family": {"mu": [1, 2]}},  # not drawn by this family
        {"van_der_pol_family": {"mu": [1, 2]}},  # a family the dataset does not draw
    ):
        with pytest.raises(UsageError, match="family_ranges"):
            build_dataset(["double_integrator_family"], 6, 2, seed=4, family_ranges=bad)
