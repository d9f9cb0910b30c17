"""The baselines as evaluation rows and the verdict (lib/llm/verdict.py): a controller that answers the labels
beats every baseline, one that answers u = 0 does not; baselines re-plan in MPC like a model."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import make_dataset

from lib.control.answer import format_controls
from lib.control.baselines import dataset_baselines
from lib.control.dataset_format import load_records, read_info
from lib.llm.evaluation import answer_records, score_samples
from lib.llm.verdict import (
    baseline_rows,
    best_baseline,
    log_gap_ratio,
    problem_gaps,
    verdicts,
    versus,
    versus_each_baseline,
)


@pytest.fixture(scope="module")
def setting(tmp_path_factory):
    root = tmp_path_factory.mktemp("verdict")
    # the wide box: the bounds bind often, so no fit of 60 labels is near the optimum (in the default box an
    # affine fit is within ~0.2% of it, as close as the printed optimum itself)
    path = make_dataset(root, "v", ["double_integrator_short"], 60, 60, "--wide")
    records = load_records(path, "eval", round_robin=True)[0]
    fitted = dataset_baselines(path, read_info(path), ["double_integrator_short"])
    return records, fitted


def answering(records, controls_of):
    by_prompt = {r["prompt"][-1]["content"]: r for r in records}

    def answer(prompts):
        return [f"<REASONING></REASONING><CONTROLS>{format_controls(np.asarray(controls_of(by_prompt[p[-1]['content']])))}"
                "</CONTROLS>" for p in prompts]  # fmt: skip

    return answer


@pytest.fixture(scope="module")
def answered(setting):
    """The baselines' rows, and the rows of a controller answering the labels and of one answering u = 0."""
    records, fitted = setting
    baselines = {name: baseline_rows(records, fitted, name) for name in ("nearest", "knn", "affine", "mlp")}
    labels = score_samples(records, answer_records(records, answering(records, lambda r: r["u_opt"])))
    zeros = score_samples(records, answer_records(records, answering(records, lambda r: np.zeros(10))))
    return baselines, labels, zeros


def test_the_verdict_flips_between_the_labels_and_doing_nothing(answered):
    baselines, labels, zeros = answered
    each = versus_each_baseline({"labels": labels, "zeros": zeros}, baselines)
    result = verdicts(each, baselines)
    assert result["labels"]["beats"] == "yes"
    assert result["zeros"]["beats"] == "no"
    best = best_baseline(baselines)
    assert result["labels"]["best_baseline"] == best
    assert result["zeros"]["median_gap"] > result["zeros"]["baseline_median_gap"]


def test_each_baseline_gets_the_verdicts_statistic(answered):
    baselines, labels, zeros = answered
    each = versus_each_baseline({"labels": labels, "zeros": zeros}, baselines)
    best = verdicts(each, baselines)["labels"]
    assert set(each["labels"]) == set(baselines)
    assert all(v["beats"] == "yes" and v["model_better_share"] > 0.5 for v in each["labels"].values())
    assert all(v["beats"] == "no" for v in each["zeros"].values())
    # the verdict is the statistic against the best baseline, computed on its own
    direct = versus(labels, baselines[best_baseline(baselines)])
    assert {k: v for k, v in best.items() if k != "best_baseline"} == direct
    # the share counts problems the model answers better, per problem, from the same gaps
    affine_gaps = problem_gaps(baselines["affine"])
    expected = np.mean(log_gap_ratio(problem_gaps(labels), affine_gaps) < 0)
    assert each["labels"]["affine"]["model_better_share"] == pytest.approx(expected)


def test_a_failure_is_the_worst_gap_and_two_failures_are_equal():
    model = np.array([0.5, np.inf, np.inf, 0.0005])
    base = np.array([0.1, 0.1, np.inf, 0.0001])
    d = log_gap_ratio(model, base)
    assert d[0] == pytest.approx(np.log(5)) and d[1] == np.inf and d[2] == 0.0 and d[3] == 0.0  # under 0.1%


def test_baselines_replan_in_mpc_from_every_visited_state(setting):
    records, fitted = setting
    open_loop = baseline_rows(records, fitted, "affine")
    replanned = baseline_rows(records, fitted, "affine", mode="mpc", replan_every=10)  # one plan: open loop
    assert np.array_equal(problem_gaps(open_loop), problem_gaps(replanned))
    every_step = baseline_rows(records, fitted, "affine", mode="mpc", replan_every=1)
    assert every_step.metrics["parsed"].all() and not np.array_equal(
        problem_gaps(open_loop), problem_gaps(every_step)
    )
