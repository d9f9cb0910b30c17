"""Family labels (lib/control/references.py, solve_family): one NLP per (family, N), warm starts, cold starts
until agreement; each record's optimum is the best of 5 cold starts of today's per-System path."""

from __future__ import annotations

import numpy as np
import pytest

from lib.control.families import FAMILIES, draw_parameters, family_system
from lib.control.references import (
    AGREE_RTOL,
    FAMILY_AGREE,
    FAMILY_BANG_BANG,
    START_NAMES,
    _derivatives,
    _member_lqr_gain,
    clipped_lqr_controls,
    euler_lqr_gain,
    member_nlp,
    problem_parameters,
    solve_family,
    solve_reference,
)
from lib.control.systems import simulate, trajectory_cost


def cost(system, x0, u):
    return trajectory_cost(system, simulate(system, x0, u), u)


def members(name: str, steps: list[int], seed: int):
    """Members of a family with the horizons given (several share one: a chain with warm starts), and an x0
    each on the printed grid of the member's box."""
    rng = np.random.default_rng(seed)
    params = draw_parameters(FAMILIES[name], len(steps), rng)
    systems = [family_system(name, p | {"steps": n}) for p, n in zip(params, steps, strict=True)]
    x0 = np.stack([np.round(rng.uniform(*np.array(s.x0_box).T), 2) for s in systems])
    return systems, x0


# van_der_pol_family: a chain of 6 at N = 20 and one of 2 at N = 21, in mixed order; pendulum_family: 4 at N = 35
CASES = {
    "van_der_pol_family": ([20, 21, 20, 20, 21, 20, 20, 20], 3),
    "pendulum_family": ([35, 35, 35, 35], 4),
}


@pytest.fixture(scope="module", params=list(CASES))
def family_case(request):
    steps, seed = CASES[request.param]
    systems, x0 = members(request.param, steps, seed)
    return systems, x0, solve_family(systems, x0, seed=seed)


def test_each_record_is_its_own_certified_optimum_in_input_order(family_case):
    systems, x0, refs = family_case
    assert len(refs) == len(systems)
    for i, (system, ref) in enumerate(zip(systems, refs, strict=True)):
        assert ref.u.shape == ref.u_label.shape == (1, system.steps)
        assert np.all((ref.u >= system.u_min) & (ref.u <= system.u_max))
        assert np.all((ref.u_label >= system.u_min) & (ref.u_label <= system.u_max))
        np.testing.assert_array_equal(ref.u_label, np.round(ref.u_label * 100) / 100)  # on the printed grid
        # its own problem and x0, simulated by the grader's simulator: proves the order too
        np.testing.assert_array_equal(ref.J, cost(system, x0[i : i + 1], ref.u))
        np.testing.assert_array_equal(ref.J_label, cost(system, x0[i : i + 1], ref.u_label))
        assert ref.J_label[0] >= ref.J[0] * (1 - 1e-9)
        assert ref.kkt_residual[0] <= 1e-6


def test_the_optimum_is_the_best_of_five_cold_starts_of_the_old_path(family_case):
    systems, x0, refs = family_case
    for i, (system, ref) in enumerate(zip(systems, refs, strict=True)):
        old = solve_reference(system, x0[i : i + 1], seed=i)  # its own NLP, all 5 cold starts
        assert abs(ref.J[0] - old.J[0]) <= AGREE_RTOL * max(1.0, old.J[0])


def test_starts_follow_the_rule(family_case):
    systems, _, refs = family_case
    first_of_chain = {}
    for i, system in enumerate(systems):
        first_of_chain.setdefault(system.steps, i)
    cold = len(START_NAMES)
    for i, ref in enumerate(refs):
        if first_of_chain[systems[i].steps] == i:  # a chain's first record: the 5 cold starts, as before
            assert ref.starts_total == cold
        else:  # a warm start, then cold ones until FAMILY_AGREE agree and it is not bang-bang, or all of them
            assert FAMILY_AGREE <= ref.starts_total <= 1 + cold
            if ref.starts_total < 1 + cold:
                assert ref.starts_agreed[0] >= FAMILY_AGREE
                on_bound = (ref.u == systems[i].u_min) | (ref.u == systems[i].u_max)
                assert on_bound.mean() < FAMILY_BANG_BANG
        assert 1 <= ref.starts_agreed[0] <= ref.starts_total


def test_a_chain_alone_gives_the_same_bits_as_in_the_batch():
    # chains depend on nothing outside them: why the answers do not depend on the worker count
    systems, x0 = members("van_der_pol_family", CASES["van_der_pol_family"][0], 3)
    together = solve_family(systems, x0, seed=3)
    chain = [i for i, s in enumerate(systems) if s.steps == 21]
    alone = solve_family([systems[i] for i in chain], x0[chain], seed=3)
    for i, ref in zip(chain, alone, strict=True):
        np.testing.assert_array_equal(ref.u, together[i].u)
        np.testing.assert_array_equal(ref.u_label, together[i].u_label)


def test_the_family_nlp_computes_the_simulated_cost_gradient_and_lqr_start():
    # one NLP serves every member: its parameters must make it each member's own cost
    systems, x0 = members("pendulum_family", [36, 36], 8)
    rng = np.random.default_rng(0)
    for system, x in zip(systems, x0, strict=True):
        u = rng.uniform(system.u_min, system.u_max, size=(1, system.steps))
        J, grad, _ = _derivatives(member_nlp(system), u[0], problem_parameters(system, x))
        assert cost(system, x[None], u)[0] == pytest.approx(J, rel=1e-12)
        # the cost alone, which compares the starts, is the same bits as the derivatives' J
        assert float(member_nlp(system).cost(u[0], problem_parameters(system, x))) == J
        # the clipped-LQR start, closed loop in CasADi, is the numpy one
        K = euler_lqr_gain(system)[0]
        start = member_nlp(system).clipped_lqr(K, problem_parameters(system, x), [system.u_min, system.u_max])
        np.testing.assert_allclose(
            np.asarray(start).ravel(), clipped_lqr_controls(system, x[None])[0], rtol=0, atol=1e-12
        )
        h = 1e-6
        for k in (0, system.steps - 1):
            e = np.zeros_like(u)
            e[0, k] = h
            numeric = (cost(system, x[None], u + e) - cost(system, x[None], u - e))[0] / (2 * h)
            assert numeric == pytest.approx(grad[k], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("name", ["van_der_pol_family", "pendulum_family", "two_mass_spring_family"])
def test_the_members_lqr_gain_is_the_scipy_one(name):
    # the clipped-LQR start's gain by doubling (_member_lqr_gain) against scipy's DARE (euler_lqr_gain)
    rng = np.random.default_rng(11)
    for params in draw_parameters(FAMILIES[name], 20, rng):
        system = family_system(name, params)
        K = euler_lqr_gain(system)[0]
        assert np.abs(_member_lqr_gain(system) - K).max() <= 1e-12 * np.abs(K).max()


@pytest.mark.slow
def test_the_same_bits_with_one_and_two_workers():
    systems, x0 = members("van_der_pol_family", [20] * 40 + [22] * 30, 5)
    one = solve_family(systems, x0, seed=5, workers=1)
    two = solve_family(systems, x0, seed=5, workers=2)
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.u, b.u)
        np.testing.assert_array_equal(a.u_label, b.u_label)
        np.testing.assert_array_equal(a.kkt_residual, b.kkt_residual)
        assert a.starts_total == b.starts_total and a.starts_agreed[0] == b.starts_agreed[0]
