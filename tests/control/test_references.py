"""Exact references (lib/control/references.py): certified optima, labels on the printed grid, the old baseline."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lib.control.dataset import sample_initial_states
from lib.control.labels import round_plain
from lib.control.references import (
    KKT_TOL_LINEAR,
    START_NAMES,
    _derivatives,
    _nlp,
    clipped_lqr_controls,
    condensed_qp,
    solve_reference,
    start_controls,
)
from lib.control.systems import SYSTEMS, get_system, simulate, trajectory_cost

LINEAR = [name for name, s in SYSTEMS.items() if s.is_linear]
NONLINEAR = [name for name, s in SYSTEMS.items() if not s.is_linear]


def cost(system, x0, u):
    return trajectory_cost(system, simulate(system, x0, u), u)


@pytest.fixture(scope="module", params=[(name, wide) for name in LINEAR for wide in (False, True)])
def linear_case(request):
    name, wide = request.param
    system = get_system(name)
    x0 = sample_initial_states(system, 300, seed=7, wide=wide)
    return system, x0, solve_reference(system, x0)


def test_linear_optima_are_feasible_certified_and_simulate_to_their_cost(linear_case):
    system, x0, ref = linear_case
    assert np.all((ref.u >= system.u_min) & (ref.u <= system.u_max))
    assert ref.kkt_residual.max() <= KKT_TOL_LINEAR
    np.testing.assert_array_equal(ref.J, cost(system, x0, ref.u))
    assert ref.starts_total == 1 and np.all(ref.starts_agreed == 1)


def test_linear_boxes_exercise_the_bounds(linear_case):
    system, _, ref = linear_case
    saturated = (ref.u == system.u_min) | (ref.u == system.u_max)
    assert saturated.any(axis=1).mean() > 0.01  # otherwise the bound handling would go untested


def test_no_feasible_perturbation_lowers_a_linear_optimum(linear_case):
    system, x0, ref = linear_case
    rng = np.random.default_rng(3)
    for scale in (1e-4, 1e-2, 1.0):
        for _ in range(5):
            u = np.clip(ref.u + scale * rng.standard_normal(ref.u.shape), system.u_min, system.u_max)
            assert np.all(cost(system, x0, u) >= ref.J - 1e-9 * np.maximum(1.0, ref.J))


SHIFTED_TARGET = dataclasses.replace(get_system("double_integrator"), x_target=np.array([0.5, 0.0]))


@pytest.mark.parametrize(
    "system", [*(get_system(name) for name in LINEAR), SHIFTED_TARGET], ids=[*LINEAR, "shifted_target"]
)
def test_condensed_gradient_is_the_gradient_of_the_simulated_cost(system):
    # the certificate is computed on the condensed QP: it must be the derivative of what the grader simulates
    qp = condensed_qp(system)
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, size=(1, system.n))
    u = rng.uniform(system.u_min, system.u_max, size=(1, system.steps))
    grad = u @ qp.H + qp.linear_term(x0)
    h = 1e-5
    for k in (0, system.steps // 2, system.steps - 1):
        e = np.zeros_like(u)
        e[0, k] = h
        numeric = (cost(system, x0, u + e) - cost(system, x0, u - e))[0] / (2 * h)
        assert numeric == pytest.approx(grad[0, k], rel=1e-6, abs=1e-8)


@pytest.mark.parametrize("name", NONLINEAR)
def test_casadi_cost_and_gradient_are_the_simulated_ones(name):
    # IPOPT optimises, and the KKT residual checks, CasADi's copy of the cost: it must be the grader's
    system = get_system(name)
    rng = np.random.default_rng(6)
    x0 = sample_initial_states(system, 1, seed=6, wide=True)
    u = rng.uniform(system.u_min, system.u_max, size=(1, system.steps))
    J, grad, _ = _derivatives(_nlp(system), u[0], x0[0])
    assert cost(system, x0, u)[0] == pytest.approx(J, rel=1e-12)
    h = 1e-6
    for k in (0, system.steps - 1):
        e = np.zeros_like(u)
        e[0, k] = h
        numeric = (cost(system, x0, u + e) - cost(system, x0, u - e))[0] / (2 * h)
        assert numeric == pytest.approx(grad[k], rel=1e-5, abs=1e-6)


def test_linear_solution_does_not_depend_on_the_batch():
    system = get_system("double_integrator")
    x0 = sample_initial_states(system, 50, seed=1, wide=True)
    together = solve_reference(system, x0)
    alone = solve_reference(system, x0[::-1][:7])
    np.testing.assert_array_equal(alone.u, together.u[::-1][:7])


@pytest.fixture(scope="module", params=NONLINEAR)
def nonlinear_case(request):
    system = get_system(request.param)
    x0 = sample_initial_states(system, 3, seed=5, wide=True)
    return system, x0, solve_reference(system, x0, seed=5)


def test_nonlinear_optimum_beats_zero_control_lqr_and_every_start(nonlinear_case):
    system, x0, ref = nonlinear_case
    assert np.all((ref.u >= system.u_min) & (ref.u <= system.u_max))
    np.testing.assert_array_equal(ref.J, cost(system, x0, ref.u))
    assert np.all(cost(system, x0, np.zeros_like(ref.u)) >= ref.J)
    assert np.all(cost(system, x0, clipped_lqr_controls(system, x0)) >= ref.J)
    for i in range(len(x0)):
        starts = start_controls(system, x0[i], np.random.default_rng([5, i]))
        assert len(starts) == len(START_NAMES) == ref.starts_total
        assert ref.J[i] <= cost(system, np.repeat(x0[i : i + 1], len(starts), 0), starts).min()
    assert np.all((ref.starts_agreed >= 1) & (ref.starts_agreed <= ref.starts_total))


def test_nonlinear_optimum_is_a_polished_local_minimum(nonlinear_case):
    system, x0, ref = nonlinear_case
    assert ref.kkt_residual.max() <= 1e-6
    rng = np.random.default_rng(4)
    for _ in range(5):
        u = np.clip(ref.u + 1e-3 * rng.standard_normal(ref.u.shape), system.u_min, system.u_max)
        assert np.all(cost(system, x0, u) >= ref.J - 1e-9 * ref.J)


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_labels_are_printable_and_beat_plain_rounding(name):
    system = get_system(name)
    x0 = sample_initial_states(system, 200 if system.is_linear else 3, seed=2)
    ref = solve_reference(system, x0, decimals=2)
    np.testing.assert_array_equal(ref.u_label, np.round(ref.u_label * 100) / 100)  # on the grid
    assert np.all((ref.u_label >= system.u_min) & (ref.u_label <= system.u_max))
    np.testing.assert_array_equal(ref.J_label, cost(system, x0, ref.u_label))
    plain = round_plain(system, ref.u, 2)
    assert np.all(ref.J_label <= cost(system, x0, plain))
    assert np.all(ref.J_label >= ref.J - 1e-9 * ref.J)
    floor = 0.01 * np.median(ref.J)
    assert np.max((ref.J_label - ref.J) / np.maximum(ref.J, floor)) < 0.01  # labels pass success@1%


def _grid_around_target(radius: int) -> np.ndarray:
    """Every 2-decimal state (p, v) within `radius` grid steps of the target 0, but the target itself."""
    r = np.arange(-radius, radius + 1) / 100
    x0 = np.stack(np.meshgrid(r, r, indexing="ij"), -1).reshape(-1, 2)
    return x0[np.any(x0 != 0, axis=1)]


def _floored_label_gaps(system, x0: np.ndarray, typical: slice) -> np.ndarray:
    """(J_label - J*) / max(J*, J_floor), J_floor = 1% of the median J* of the rows `typical` (a dataset's)."""
    ref = solve_reference(system, x0)
    np.testing.assert_array_equal(ref.J_label, cost(system, x0, ref.u_label))
    floor = 0.01 * np.median(ref.J[typical])
    return (ref.J_label - ref.J) / np.maximum(ref.J, floor)


@pytest.mark.parametrize("name", ["double_integrator", "double_integrator_short"])
def test_labels_stay_within_one_percent_of_the_floored_optimum_near_the_target(name):
    # x_0 near the target is where rounding to 2 decimals hurts most (J* ~ 1e-3 there): all 440 states
    # within 0.1 of it, and 1000 typical ones that set the floor as a dataset's median would
    system = get_system(name)
    near = _grid_around_target(10)
    x0 = np.concatenate([near, sample_initial_states(system, 1000, seed=11)])
    assert _floored_label_gaps(system, x0, slice(len(near), None)).max() < 0.01


@pytest.mark.slow
@pytest.mark.parametrize("name", ["double_integrator", "double_integrator_short"])
def test_labels_stay_within_one_percent_of_the_floored_optimum_on_the_whole_box(name):
    # all 25,920 states of the default box [-0.8, 0.8]^2 at 2 decimals; the floor from their median
    system = get_system(name)
    assert _floored_label_gaps(system, _grid_around_target(80), slice(None)).max() < 0.01


def test_labels_near_the_target_are_the_cheapest_printable_answer():
    # no 2-decimal answer comes within 1% of J* there (20% at best for x_0 = (0, -0.01)): the label is the
    # cheapest of the 3^10 answers within one grid step of u* rounded
    system = get_system("double_integrator_short")
    x0 = np.array([[0.0, -0.01], [0.02, 0.04], [0.01, 0.0]])
    ref = solve_reference(system, x0)
    steps = np.stack(np.meshgrid(*[(-1, 0, 1)] * system.steps, indexing="ij"), -1).reshape(-1, system.steps)
    for i in range(len(x0)):
        answers = np.clip(np.round(ref.u[i] * 100) / 100 + steps / 100, system.u_min, system.u_max)
        best = cost(system, np.repeat(x0[i : i + 1], len(answers), 0), answers).min()
        assert ref.J_label[i] <= best * (1 + 1e-12)
    assert (ref.J_label[0] - ref.J[0]) / ref.J[0] > 0.15  # why the promise needs the floor


def test_old_baseline_is_clipped_and_differs_from_the_optimum():
    system = get_system("two_mass_spring")
    x0 = sample_initial_states(system, 100, seed=9, wide=True)
    u = clipped_lqr_controls(system, x0)
    assert np.all((u >= system.u_min) & (u <= system.u_max))
    assert np.any(u == system.u_max) and np.any(u == system.u_min)
    ref = solve_reference(system, x0)
    ratio = cost(system, x0, u) / ref.J
    assert ratio.min() >= 1.0 - 1e-12 and np.median(ratio) > 1.01
