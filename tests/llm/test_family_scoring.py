"""A family member's answer is scored with its own problem (issue 19): rewards, evaluation rows and the
baselines read each record's parameters, never a system default. Two records that differ only in dt."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_dataset

from lib.control.baselines import dataset_baselines
from lib.control.dataset import record_lines
from lib.control.dataset_format import load_records, read_info
from lib.control.families import family_system
from lib.control.references import solve_reference
from lib.llm.evaluation import answer_records, reference_rows, score_samples
from lib.llm.rewards import REWARDS
from lib.llm.verdict import baseline_rows

BASE = {"dt": 0.3, "steps": 10, "u_max": 2.0, "q": 1.0, "r": 0.1, "qf": 10.0, "p_target": 0.0}


@pytest.fixture(scope="module")
def twins() -> list[dict]:
    """Two records of double_integrator_family from the same x0 whose problems differ only in dt."""
    x0 = np.array([[0.6, -0.3]])
    records = []
    for i, dt in enumerate((0.3, 0.5)):
        params = BASE | {"dt": dt}
        system = family_system("double_integrator_family", params)
        line = record_lines(system, x0, solve_reference(system, x0), 2, params=params, first_index=i)[0]
        records.append(json.loads(line) | {"J_floor": 0.01})
    return records


def label_text(record: dict) -> str:
    return record["completion"][0]["content"]


def test_each_label_is_optimal_for_its_own_record_only(twins):
    rows = reference_rows(twins, "label")
    assert rows.metrics["gap"].max() < 0.01  # each record's label, scored with its own dt
    # the first record's label given to both: right for the first, far off for the second
    same = answer_records(twins, lambda prompts: [label_text(twins[0])] * len(prompts))
    gap = score_samples(twins, same).metrics["gap"]
    assert gap[0] < 0.01 and gap[1] > 0.05


def test_rewards_score_each_completion_with_its_records_parameters(twins):
    columns = {key: [r[key] for r in twins] for key in ("system", "x0", "J_opt", "J_floor", "J_zero")}
    columns["params"] = [json.dumps(r["params"]) for r in twins]  # as the GRPO dataset passes them
    texts = [label_text(twins[0])] * 2
    optimality = REWARDS["optimality"]([[]] * 2, texts, **columns)
    assert optimality[0] > 0.9 and optimality[1] < optimality[0] - 0.2
    own = REWARDS["optimality"]([[]] * 2, [label_text(r) for r in twins], **columns)
    assert min(own) > 0.9


def test_baselines_of_a_family_use_the_drawn_values_and_each_records_horizon(tmp_path):
    path = make_dataset(tmp_path, "fam", ["double_integrator_family"], 300, 40)
    records = load_records(path, "eval")[0]
    assert len({r["horizon"]["steps"] for r in records}) > 1  # horizons of several lengths in one split
    fitted = dataset_baselines(path, read_info(path), ["double_integrator_family"])
    assert fitted["double_integrator_family"].train_x.shape[1] == 2 + 7  # x0 and the seven drawn values
    for name in ("nearest", "affine", "mlp"):
        rows = baseline_rows(records, fitted, name)
        assert all(len(u) == r["horizon"]["steps"] for u, r in zip(rows.u, records, strict=True)), name
        assert rows.metrics["feasible"].all(), name  # cut to each record's N, clipped to its own bound
    # the MPC re-plan asks with the record's values from every visited state
    mpc = baseline_rows(records[:4], fitted, "affine", mode="mpc", replan_every=3)
    assert mpc.metrics["feasible"].all()
