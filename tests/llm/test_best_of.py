"""Best of k (lib.llm.evaluation.best_of_rows) and the paired log-ratio of gaps (paired_log_ratio): the
selection on hand-built rows, first-k nesting, and the statistic against a hand computation. Pure numpy, no
model; main_eval's --best-of-k runs in test_eval.py."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lib.llm.evaluation import (
    GAP_FLOOR,
    SampleRows,
    best_of_rows,
    log_gap_ratio,
    paired_difference,
    paired_log_ratio,
)

NAN = math.nan


def hand_rows(samples: list[list[tuple]], k: int) -> SampleRows:
    """Rows of len(samples) records with k samples each; a sample is (kind, value): ("ok", J) feasible,
    ("out", violation) parsed but out of bounds, ("junk", None) unparsed. gap = J / 10 - 1 (J* = 10)."""
    rows = SampleRows(k=k)
    metrics: dict[str, list] = {"parsed": [], "feasible": [], "J": [], "violation": [], "gap": []}
    for r, record in enumerate(samples):
        for j, (kind, value) in enumerate(record):
            rows.system.append("double_integrator")
            rows.record_id.append(f"r{r}")
            rows.completion.append(f"record {r} sample {j}")
            rows.reason.append("" if kind != "junk" else "missing tag <CONTROLS>")
            rows.u.append(np.full(3, float(r * 10 + j)))
            J = value if kind == "ok" else (12.0 if kind == "out" else NAN)
            metrics["parsed"].append(kind != "junk")
            metrics["feasible"].append(kind == "ok")
            metrics["J"].append(J)
            metrics["violation"].append(value if kind == "out" else (0.0 if kind == "ok" else NAN))
            metrics["gap"].append(J / 10 - 1)
    rows.metrics = {name: np.array(values) for name, values in metrics.items()}
    return rows


HAND = [
    [("ok", 15.0), ("ok", 11.0), ("out", 0.1), ("junk", None)],  # the lowest J among the feasible: sample 1
    [("out", 0.5), ("out", 0.2), ("junk", None), ("junk", None)],  # none feasible: the smallest violation
    [("junk", None)] * 4,  # nothing parsed: the first sample
    [("junk", None), ("junk", None), ("out", 0.3), ("ok", 20.0)],  # feasible beats all, however costly
]


def test_best_of_picks_the_feasible_sample_with_the_lowest_cost_and_reindexes_every_field():
    rows = hand_rows(HAND, 4)
    best = best_of_rows(rows, 4)
    chosen = [1, 5, 8, 15]  # record-major indices of the samples the simulator ranks first
    assert best.k == 1 and len(best) == 4
    assert best.completion == [rows.completion[i] for i in chosen]
    assert best.record_id == ["r0", "r1", "r2", "r3"] and best.reason == [rows.reason[i] for i in chosen]
    assert all(np.array_equal(best.u[n], rows.u[i]) for n, i in enumerate(chosen))
    for name, values in rows.metrics.items():
        assert np.array_equal(best.metrics[name], values[chosen], equal_nan=True), name


def test_an_unparsed_answer_is_chosen_only_when_all_k_are_unparsed():
    rows = hand_rows(HAND, 4)
    best_2 = best_of_rows(rows, 2)
    # record 3's first two samples are both unparsed: best of 2 has nothing better; best of 4 finds one
    assert list(best_2.metrics["parsed"]) == [True, True, False, False]
    assert best_of_rows(rows, 4).metrics["feasible"][3]
    assert best_of_rows(rows, 2).completion[0] == "record 0 sample 1"
    with pytest.raises(ValueError):
        best_of_rows(rows, 5)


def random_rows(records: int, k: int, seed: int) -> SampleRows:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(["ok", "out", "junk"], size=(records, k), p=[0.5, 0.3, 0.2])
    samples = [
        [(kind, float(rng.uniform(10, 30)) if kind == "ok" else float(rng.uniform(0, 1))) for kind in row]
        for row in kinds
    ]
    return hand_rows(samples, k)


def rank(rows: SampleRows) -> list[tuple[int, float]]:
    """Per record the simulator's ranking key of its (only) row: lower is better."""
    m = rows.metrics
    return [
        (0, m["J"][i]) if m["feasible"][i] else (1, m["violation"][i]) if m["parsed"][i] else (2, 0.0)
        for i in range(len(rows))
    ]


def test_best_of_8_is_never_worse_than_best_of_4_and_takes_the_lowest_feasible_cost():
    rows = random_rows(300, 16, seed=5)
    previous = None
    for k in (1, 2, 4, 8, 16):
        best = best_of_rows(rows, k)
        keys = rank(best)
        if previous is not None:  # the first k samples are among the first 2k: never ranked worse
            assert all(now <= before for now, before in zip(keys, previous, strict=True))
        previous = keys
        J = rows.metrics["J"].reshape(300, 16)[:, :k]
        feasible = rows.metrics["feasible"].reshape(300, 16)[:, :k]
        has = feasible.any(axis=1)
        lowest = np.where(feasible, J, np.inf).min(axis=1)
        assert np.array_equal(best.metrics["feasible"], has)
        assert np.array_equal(best.metrics["J"][has], lowest[has])
    # the gap follows the cost: best of 16 is feasible at least as often as best of 4, never with a larger gap
    four, sixteen = best_of_rows(rows, 4), best_of_rows(rows, 16)
    both = four.metrics["feasible"]
    assert sixteen.metrics["feasible"][both].all()
    assert (sixteen.metrics["gap"][both] <= four.metrics["gap"][both]).all()


# ---------------------------------------------------------------- the paired log-ratio


def test_the_log_ratio_statistic_equals_a_hand_computation():
    before = np.array([0.10, 0.02, 0.0005])
    after = np.array([0.05, 0.03, 0.0002])  # halved, 1.5 times, both under the 0.1% floor (equal)
    d = paired_log_ratio(before, after, seed=2)
    hand = (math.log(0.5) + math.log(1.5) + 0.0) / 3
    assert d["problems"] == d["both_feasible"] == 3
    assert d["mean_log_ratio"] == pytest.approx(hand)
    assert d["typical_ratio"] == pytest.approx(math.exp(hand))
    assert d["after_better"] == pytest.approx(1 / 3)  # the tie under the floor is no win
    assert d["median_log_ratio"] == pytest.approx(0.0)
    low, high = d["mean_log_ratio_ci"]
    assert low <= hand <= high
    assert d["typical_ratio_ci"] == pytest.approx([math.exp(low), math.exp(high)])
    assert paired_log_ratio(before, after, seed=2) == d  # seeded
    assert GAP_FLOOR == 1e-3


def test_failures_are_counted_apart_and_a_feasible_answer_beats_a_failure():
    inf = math.inf
    before = np.array([0.1, inf, inf, 0.1])
    after = np.array([inf, 0.1, inf, 0.05])
    d = paired_log_ratio(before, after)
    assert (d["only_after_failed"], d["only_before_failed"], d["both_failed"], d["both_feasible"]) == (
        1,
        1,
        1,
        1,
    )
    assert d["mean_log_ratio"] == pytest.approx(math.log(0.5))  # the one problem where both are feasible
    assert d["after_better"] == pytest.approx(0.5)  # problem 1 (feasible vs failure) and problem 3
    assert list(log_gap_ratio(after, before)) == [inf, -inf, 0.0, pytest.approx(math.log(0.5))]
    nothing = paired_log_ratio(np.array([inf]), np.array([inf]))
    assert nothing["mean_log_ratio"] is None and nothing["after_better"] == 0.0


def test_a_ten_percent_improvement_on_1000_problems_is_seen():
    rng = np.random.default_rng(0)
    before = np.exp(rng.uniform(np.log(0.005), np.log(0.5), 1000))
    after = 0.9 * before * np.exp(rng.normal(0, 0.3, 1000))  # 10% better on average, noisy per problem
    d = paired_log_ratio(before, after, seed=1)
    low, high = d["mean_log_ratio_ci"]
    assert high < 0 and d["typical_ratio_ci"][1] < 1  # the interval excludes "no change"
    assert d["typical_ratio"] == pytest.approx(0.9, abs=0.03)
    # pairing by problem cancels the spread between easy and hard problems: a much narrower interval than
    # the one of the medians' relative change on the same answers
    change_low, change_high = paired_difference(before, after, seed=1)["median_change_ci"]
    ratio_low, ratio_high = d["typical_ratio_ci"]
    assert ratio_high - ratio_low < (change_high - change_low) / 2
    same = paired_log_ratio(before, before * np.exp(rng.normal(0, 0.3, 1000)), seed=1)
    assert same["mean_log_ratio_ci"][0] < 0 < same["mean_log_ratio_ci"][1]  # no change: 0 inside


def test_the_verdict_and_the_paired_table_share_one_log_gap_ratio():
    from lib.llm import evaluation, verdict

    assert verdict.log_gap_ratio is evaluation.log_gap_ratio
