"""Metrics (lib/control/metrics.py): simulated with no clipping, vectorised, the same numbers for rewards and eval."""

from __future__ import annotations

import numpy as np
import pytest

from lib.control.answer import format_answers
from lib.control.dataset import sample_initial_states
from lib.control.metrics import (
    FEASIBILITY_TOL,
    SUCCESS_EPS,
    control_violation,
    evaluate_completions,
    evaluate_controls,
    j_floor,
    normalised_score,
    optimality_gap,
    success_at,
)
from lib.control.references import solve_reference
from lib.control.systems import get_system, simulate


@pytest.fixture(scope="module")
def di():
    system = get_system("double_integrator")
    x0 = sample_initial_states(system, 64, seed=3, wide=True)
    ref = solve_reference(system, x0)
    return system, x0, ref, j_floor(ref.J)


def test_optimal_controls_score_one_and_zero_control_scores_zero(di):
    system, x0, ref, floor = di
    best = evaluate_controls(system, x0, ref.u, ref.J, floor)
    assert best.parsed.all() and best.feasible.all()
    np.testing.assert_allclose(best.gap, 0.0, atol=1e-12)
    np.testing.assert_allclose(best.score, 1.0, atol=1e-12)
    assert all(best.success[eps].all() for eps in SUCCESS_EPS)
    nothing = evaluate_controls(system, x0, np.zeros_like(ref.u), ref.J, floor)
    regular = nothing.J_zero - ref.J >= floor  # elsewhere u = 0 is nearly optimal and the floor applies
    assert regular.mean() > 0.9
    np.testing.assert_allclose(nothing.score[regular], 0.0, atol=1e-12)
    np.testing.assert_array_equal(nothing.J, nothing.J_zero)
    assert not nothing.success[0.10].any()
    np.testing.assert_allclose(
        nothing.terminal_error, np.linalg.norm(simulate(system, x0, 0 * ref.u)[:, -1], axis=1)
    )


def test_printed_labels_succeed_at_one_percent(di):
    system, x0, ref, floor = di
    metrics = evaluate_completions(system, x0, format_answers(system, x0, ref.u_label, ref.J), ref.J, floor)
    assert metrics.parsed.all() and metrics.feasible.all() and metrics.success[0.01].all()
    np.testing.assert_array_equal(metrics.J, ref.J_label)


def test_out_of_bound_controls_are_infeasible_and_simulated_as_written(di):
    system, x0, ref, floor = di
    u = ref.u.copy()
    u[:, 0] = system.u_max + 1e-3  # a little outside: not hidden by clipping
    metrics = evaluate_controls(system, x0, u, ref.J, floor)
    assert not metrics.feasible.any()
    np.testing.assert_allclose(metrics.violation, 1e-3)
    clipped = evaluate_controls(system, x0, np.clip(u, system.u_min, system.u_max), ref.J, floor)
    assert np.all(metrics.J != clipped.J)
    assert not any(metrics.success[eps].any() for eps in SUCCESS_EPS)
    inside = ref.u.copy()
    inside[:, 0] = system.u_max + FEASIBILITY_TOL / 2  # within the tolerance
    assert evaluate_controls(system, x0, inside, ref.J, floor).feasible.all()


def test_unparsed_rows_are_nan_and_never_succeed(di):
    system, x0, ref, floor = di
    texts = ["no answer", "<REASONING></REASONING><CONTROLS>1, 2</CONTROLS>"] + [""] * (len(x0) - 2)
    metrics = evaluate_completions(system, x0, texts, ref.J, floor)
    assert not metrics.parsed.any() and not metrics.feasible.any()
    assert np.isnan(metrics.J).all() and np.isnan(metrics.gap).all() and np.isnan(metrics.score).all()
    assert not any(metrics.success[eps].any() for eps in SUCCESS_EPS)
    assert np.isfinite(metrics.J_zero).all()


def test_diverging_controls_do_not_break_the_batch(di):
    system, x0, ref, floor = di
    u = ref.u.copy()
    u[0] = 1e300
    metrics = evaluate_controls(system, x0, u, ref.J, floor)
    assert metrics.parsed[0] and not metrics.feasible[0] and not metrics.success[0.10][0]
    assert metrics.success[0.01][1:].all()


def test_gap_and_score_formulas_and_their_floors():
    J_opt, J_zero = np.array([10.0, 0.0, 5.0]), np.array([20.0, 0.0, 5.0])
    J = np.array([11.0, 0.5, 5.0])
    np.testing.assert_allclose(optimality_gap(J, J_opt, 1.0), [0.1, 0.5, 0.0])
    # (J0 - J) / (J0 - J*) = 0.9; where u = 0 is optimal the floor keeps S finite: 1 - 0.5 / 1
    np.testing.assert_allclose(normalised_score(J, J_opt, J_zero, 1.0), [0.9, 0.5, 1.0])
    assert j_floor(np.array([1.0, 2.0, 300.0])) == pytest.approx(0.02)
    parsed, feasible = np.array([True, True, False]), np.array([True, False, True])
    np.testing.assert_array_equal(
        success_at(parsed, feasible, np.array([0.0, 0.0, 0.0]), 0.01), [True, False, False]
    )
    np.testing.assert_array_equal(
        control_violation(get_system("pendulum"), np.full((1, 40), np.nan)), [np.inf]
    )
