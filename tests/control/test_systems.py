"""The systems, the one simulator and the one cost (lib/control/systems.py)."""

from __future__ import annotations

import casadi as ca
import numpy as np
import pytest

from lib.common.errors import UsageError
from lib.control.systems import SYSTEMS, get_system, rk4_step, simulate, trajectory_cost

NONLINEAR = [name for name, s in SYSTEMS.items() if not s.is_linear]
LINEAR = [name for name, s in SYSTEMS.items() if s.is_linear]


def test_the_four_systems_ship_with_the_required_settings():
    assert {"double_integrator", "van_der_pol", "pendulum"} <= set(SYSTEMS)
    assert any(s.is_linear and s.n == 4 for s in SYSTEMS.values())
    di = get_system("double_integrator")
    assert (di.u_min, di.u_max, di.steps, di.dt) == (-3.0, 3.0, 50, 0.1)
    assert di.x0_box == ((-0.8, 0.8), (-0.8, 0.8))
    for system in SYSTEMS.values():
        assert system.u_min < 0 < system.u_max
        assert np.all(np.linalg.eigvalsh(system.Q) >= 0) and system.R > 0
        for (lo, hi), (wlo, whi) in zip(system.x0_box, system.x0_box_wide, strict=True):
            assert wlo <= lo < hi <= whi


def test_double_integrator_uses_the_exact_zero_order_hold():
    di = get_system("double_integrator")
    np.testing.assert_allclose(di.A, [[1.0, 0.1], [0.0, 1.0]], atol=1e-15)
    np.testing.assert_allclose(di.B, [[0.005], [0.1]], atol=1e-15)
    # constant u = 1 for 1 s from rest: p = t^2/2 = 0.5 and v = 1 exactly (ZOH is exact for constant u)
    states = simulate(di, np.zeros((1, 2)), np.ones((1, 10)))
    np.testing.assert_allclose(states[0, -1], [0.5, 1.0], atol=1e-14)


def test_two_mass_spring_conserves_what_physics_says():
    system = get_system("two_mass_spring")
    # with no force, total momentum v1 + v2 is conserved and the centre of mass moves uniformly
    x0 = np.array([[0.3, 0.2, -0.1, 0.1]])
    states = simulate(system, x0, np.zeros((1, system.steps)))
    momentum = states[0, :, 1] + states[0, :, 3]
    np.testing.assert_allclose(momentum, 0.3, atol=1e-12)
    centre = (states[0, -1, 0] + states[0, -1, 2]) / 2
    assert centre == pytest.approx(0.1 + 0.15 * system.steps * system.dt, abs=1e-10)


@pytest.mark.parametrize("name", NONLINEAR)
def test_casadi_step_equals_numpy_step(name):
    system = get_system(name)
    rng = np.random.default_rng(0)
    lo, hi = np.array(system.x0_box_wide).T
    x = rng.uniform(lo - 1, hi + 1, size=(64, system.n))
    u = rng.uniform(system.u_min, system.u_max, size=64)
    xs, us = ca.SX.sym("x", system.n), ca.SX.sym("u")
    step = ca.Function(
        "step", [xs, us], [ca.vertcat(*rk4_step(system.rhs, ca.vertsplit(xs), us, system.dt, ca))]
    )
    casadi_next = np.array([np.asarray(step(x[i], u[i])).ravel() for i in range(64)])
    np.testing.assert_allclose(casadi_next, system.step(x, u), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NONLINEAR)
def test_linearisation_for_the_baseline_matches_the_dynamics(name):
    system = get_system(name)
    x, u = ca.SX.sym("x", system.n), ca.SX.sym("u")
    f = ca.vertcat(*system.rhs(ca.vertsplit(x), u, ca))
    linearise = ca.Function("linearise", [x, u], [ca.jacobian(f, x), ca.jacobian(f, u)])
    A, B = (np.asarray(m) for m in linearise(system.x_target, 0.0))
    np.testing.assert_allclose(A, system.A_cont, atol=1e-12)
    np.testing.assert_allclose(B, system.B_cont, atol=1e-12)


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_cost_is_the_documented_sum(name):
    system = get_system(name)
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=(3, system.n))
    u = rng.uniform(system.u_min, system.u_max, size=(3, system.steps))
    states = simulate(system, x0, u)
    assert states.shape == (3, system.steps + 1, system.n)
    J = trajectory_cost(system, states, u)
    for b in range(3):
        e = states[b] - system.x_target
        expected = sum(e[k] @ system.Q @ e[k] + system.R * u[b, k] ** 2 for k in range(system.steps))
        expected += e[-1] @ system.Qf @ e[-1]
        assert J[b] == pytest.approx(expected, rel=1e-12)


def test_simulator_does_not_clip_out_of_bound_controls():
    di = get_system("double_integrator")
    x0 = np.zeros((2, 2))
    u = np.stack([np.full(di.steps, 10.0), np.full(di.steps, di.u_max)])
    states = simulate(di, x0, u)
    assert states[0, -1, 1] == pytest.approx(10.0 * di.steps * di.dt)  # v = u t, with u = 10 > u_max
    assert states[0, -1, 1] > states[1, -1, 1]


def test_unknown_system_lists_the_valid_names():
    with pytest.raises(UsageError) as err:
        get_system("cartpole")
    for name in SYSTEMS:
        assert name in str(err.value)
