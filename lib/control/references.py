"""Exact optimal references for the discrete problems the grader simulates (docs/ARCHITECTURE.md, "The control core").

Linear systems: the states are linear in the controls, x_k = A^k x_0 + sum_{j<k} A^{k-1-j} B u_j, so stacking
X = (x_1, ..., x_N) = Phi x_0 + Gamma u turns the cost (lib/control/systems.py) into a box-constrained QP over u:
    J(u) = 1/2 u'H u + f(x_0)'u + const,   H = 2 (Gamma' Qbar Gamma + R I),
    f(x_0) = 2 Gamma' Qbar (Phi x_0 - X_target),   Qbar = blockdiag(Q, ..., Q, Qf)
(the stage term of x_0 is a constant). H depends only on the system, so it is built and factorised once
(`condensed_qp`, cached) and each instance only changes f. DAQP (a dual active-set solver) solves each
instance exactly: at its active set the answer is a linear solve, exact to rounding.

Certificate (`kkt_residual`): the projected-gradient violation of the first-order conditions of J over the
box, computed from grad = dJ/du independently of the solver:
    u_k strictly inside the bounds: |grad_k|;  u_k = u_max: max(grad_k, 0);  u_k = u_min: max(-grad_k, 0)
and the residual is the max over k. It is ABSOLUTE, in cost units per unit of control. For the convex QP
(H positive definite since R > 0) a zero residual means global optimality; labels require <= 1e-8.
Solver outputs within SNAP_TOL_QP / SNAP_TOL_NLP of a bound are first set exactly onto it (active-set and
interior-point solvers land within ~1e-14 and ~1e-8 of an active bound), so "at the bound" is an exact test.

Nonlinear systems: direct multiple shooting with CasADi + IPOPT. Decision variables are (x_0, u_0, x_1, u_1,
..., x_N); equality constraints x_0 = p (the initial state, an NLP parameter) and x_{k+1} = RK4(x_k, u_k), the
same `rk4_step` the numpy simulator uses. The NLP is built once per system and process (`_nlp`, cached);
each instance is then one IPOPT solve per start, from these starts (controls; the state guess is their
simulated trajectory, so every start is dynamically consistent):
    zero          u = 0
    clipped_lqr   the clipped-LQR baseline below, in closed loop
    bang_up       u_max for the first half of the horizon, u_min for the second
    bang_down     u_min then u_max
    random        i.i.d. uniform in the bounds, from a generator seeded by (seed, instance index)
The best converged start is kept (by the numpy simulator's cost, the grader's model, not IPOPT's value).
`starts_agreed` counts converged starts whose cost is within AGREE_RTOL * max(1, J*) of J*. The winner is
snapped onto its active bounds and polished by projected Newton steps on its free controls (single-
shooting cost, exact Hessian from CasADi; a control a step would push past a bound joins the active set; a
step is kept only if it lowers the residual without raising the cost). The swing-up is badly conditioned:
moving early controls by 4e-8 (IPOPT's bound relaxation) moves later gradients by ~20, and the polish brings
the KKT residual (same definition, exact CasADi gradient) from up to ~1e1 down to ~1e-9 (measured worst
over 48 instances per box: 2e-9). This certifies a local optimum; for nonconvex problems global optimality
is not certified, the agreement count is the evidence.

Families (`solve_family`): every record its own problem (lib/control/families.py), so an NLP per System
would be built per record (~0.1 s, more than its solves). Instead one NLP per (family, N) takes the problem
as its parameter p = (x0, dt, constants, Q, R, Qf, x_target) (`problem_parameters`), the bounds as lbx/ubx;
the single-shooting derivatives likewise. Records of one N are solved in chains of FAMILY_CHAIN, each record
warm-started from the optimum of its nearest solved neighbour, and cold starts run only until three starts
agree (the rule and what it records: `solve_family`'s docstring). Measured on 2,000 van_der_pol_family
members: the 5 cold starts reach one optimum on 99% of them, so a record costs ~3 solves instead of an
NLP build and 5 (3.6 on average: see bang-bang below). The family NLP is solved by fatrop, not IPOPT
(FATROP_OPTIONS): the same interior-point method with the same tolerance, but its linear algebra follows
the stages of the horizon, which halves a label's CPU and leaves the optima where IPOPT put them. Why three: on the 1% with several local optima, the warm start and the first cold start
sometimes agree on a worse one (3 of 1,926 members, 2x to 20x J*); with a second cold start, none did. Those
several optima are nearly all bang-bang (FAMILY_BANG_BANG), and there all 5 cold starts run: three starts
agreed on a worse optimum of such a member in a benchmark sample (J* 9% above the best of 5).

Labels (`u_label`): the optima rounded onto the printed grid (`decimals` decimals) by `round_for_label`,
lib/control/labels.py; its docstring says how, and what the labels promise.

Baseline (`clipped_lqr_controls`): the OLD way of labelling, kept only to measure it: an infinite-horizon
discrete LQR gain computed on a forward-Euler discretisation (A_d = I + dt Ac, B_d = dt Bc) of the
continuous model (the linearisation at the target for nonlinear systems), applied in closed loop on the
exact model with u clipped to the bounds.
"""

from __future__ import annotations

import functools
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from lib.control.labels import round_for_label
from lib.control.systems import SYSTEMS, System, rk4_step, simulate, trajectory_cost

KKT_TOL_LINEAR = 1e-8  # every linear label must certify at least this well
AGREE_RTOL = 1e-6  # starts agree when their costs are within AGREE_RTOL * max(1, J*)
# fraction of (u_max - u_min) within which a solver's control is put exactly on its bound: DAQP lands within
# ~1e-14 of an active bound, IPOPT within ~1e-8 (its bound relaxation); a tighter snap for the exact QP keeps
# an interior optimum just inside a bound from being moved onto it
SNAP_TOL_QP = 1e-12
SNAP_TOL_NLP = 1e-7
POLISH_STEPS = 8  # Newton steps at most when polishing a nonlinear optimum
START_NAMES = ("zero", "clipped_lqr", "bang_up", "bang_down", "random")
# the family path (solve_family) uses these too. Measured there and not kept (1,146 recorded solves replayed):
# tol 1e-8 (12.4 -> 11.5 iterations, but the looser optima sit farther from their bounds than SNAP_TOL_NLP, so
# 4 of 800 bang-bang members were no longer seen as bang-bang and skipped their extra cold starts, and one
# polish ended at a KKT residual of 1e-2); warm_start_init_point with the neighbour's multipliers (14 -> 18 to
# 24 iterations: the nearest of 32 members is not near enough for an interior-point warm start); a smaller
# mu_init, mu_strategy adaptive, no least-squares multiplier estimate, MUMPS' scaling and ordering options
# (no gain); SPRAL (2x slower); mehrotra_algorithm (8 iterations, but a segmentation fault in IPOPT)
IPOPT_OPTIONS = {
    "ipopt.print_level": 0,
    "ipopt.sb": "yes",  # no banner
    "print_time": False,
    "ipopt.tol": 1e-10,
    "ipopt.max_iter": 500,
}
# the family path's solver (solve_family): fatrop, an interior-point method that factorises the KKT system of
# a multiple-shooting OCP stage by stage (Riccati) where IPOPT hands MUMPS a general sparse matrix; it reads
# the stage structure from the variable and constraint order (x_0, u_0, x_1, ..., x_N; x_0 = p, then the gaps).
# Same tolerance as IPOPT. Measured on 320 van_der_pol_family members: 19 against 37 CPU ms a label, the
# same starts agreeing and the same J* on every member (largest difference 1e-15 relative). On 300
# pendulum_family members (multimodal) against the best of 5 cold IPOPT starts per member: 4 lower J* (up to
# 0.5%), 2 higher by at most 3e-5 relative (IPOPT's own family path: 3 lower, 1 higher by 1e-5). The fixed
# systems keep IPOPT: their datasets stay the same bytes for the same seed
FATROP_OPTIONS = {
    "structure_detection": "auto",
    "print_time": False,
    "debug": False,
    "fatrop.print_level": 0,
    "fatrop.tol": 1e-10,
    "fatrop.max_iter": 500,
}
_CHUNK = 8  # instances per task sent to a worker process (small: keeps the progress bar moving)
# families (solve_family): members per chain, each chain one task; its first member costs 5 cold starts, the
# others 3 when they agree and are not bang-bang (~80% of van_der_pol_family members), so 32 keeps the extra
# starts at 2/32 ~ 0.06 a record and still gives each member up to 31 neighbours to start from
FAMILY_CHAIN = 32
# starts (the warm one and two cold) that must agree on J* before a family member stops trying cold starts;
# 2 missed the best of 5 cold starts on 3 of 1,926 van_der_pol_family members, 3 on none (module docstring)
FAMILY_AGREE = 3
# a member whose agreed optimum has at least this share of its controls on a bound (bang-bang) runs all 5 cold
# starts anyway: its local optima differ in where the control switches, and the first cold starts can all
# land on the same worse one. Measured on 2,600 van_der_pol_family members: where the 5 cold starts disagree,
# 17 of 21 optima are >= 90% on a bound; where zero and clipped_lqr both missed the best, 94% to 100%.
FAMILY_BANG_BANG = 0.9


@dataclass(frozen=True)
class ReferenceSolution:
    u: np.ndarray  # [B, N] optimal controls, inside the bounds
    J: np.ndarray  # [B] their cost J*, from simulate + trajectory_cost
    u_label: np.ndarray  # [B, N] the controls as printed with `decimals` decimals (module docstring)
    J_label: np.ndarray  # [B] cost of u_label (>= J)
    kkt_residual: np.ndarray  # [B] projected-gradient residual of u (module docstring), absolute
    starts_agreed: np.ndarray  # [B] starts that reached J* (1 for the convex QP: one exact solve)
    starts_total: int
    solver: str


def snap_to_bounds(system: System, u: np.ndarray, rtol: float) -> np.ndarray:
    """Clip u into the bounds and put values within rtol * (u_max - u_min) of a bound exactly on it."""
    tol = rtol * (system.u_max - system.u_min)
    u = np.clip(u, system.u_min, system.u_max)
    u = np.where(u >= system.u_max - tol, system.u_max, u)
    return np.where(u <= system.u_min + tol, system.u_min, u)


def kkt_residual(system: System, u: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """Max violation of the box first-order conditions (module docstring); u, grad [B, N] -> [B]."""
    at_max, at_min = u >= system.u_max, u <= system.u_min
    violation = np.where(
        at_max, np.maximum(grad, 0.0), np.where(at_min, np.maximum(-grad, 0.0), np.abs(grad))
    )
    return violation.max(axis=1)


# ----------------------------------------------------------------------------------------------------------
# Linear systems: condensed QP + DAQP


@dataclass(frozen=True, eq=False)
class CondensedQP:
    Phi: np.ndarray  # [N*n, n]: X = Phi x_0 + Gamma u
    Gamma: np.ndarray  # [N*n, N]
    H: np.ndarray  # [N, N] = 2 (Gamma' Qbar Gamma + R I)
    F_x0: np.ndarray  # [n, N]: f(x_0) = x_0 @ F_x0 + f_target
    f_target: np.ndarray  # [N]

    def linear_term(self, x0: np.ndarray) -> np.ndarray:
        """f(x_0) for a batch: x0 [B, n] -> [B, N]."""
        return x0 @ self.F_x0 + self.f_target


@functools.cache
def condensed_qp(system: System) -> CondensedQP:
    """The condensed QP of a linear system (module docstring), built once per system."""
    n, N = system.n, system.steps
    A, B = system.A, system.B
    powers = [np.eye(n)]
    for _ in range(N):
        powers.append(A @ powers[-1])
    Phi = np.vstack(powers[1:])  # row block k-1 holds A^k
    Gamma = np.zeros((N * n, N))
    for k in range(1, N + 1):  # x_k depends on u_j, j < k, through A^{k-1-j} B
        for j in range(k):
            Gamma[(k - 1) * n : k * n, j] = (powers[k - 1 - j] @ B)[:, 0]
    Qbar = np.kron(np.eye(N), system.Q)
    Qbar[-n:, -n:] = system.Qf
    QG = Qbar @ Gamma
    H = 2.0 * (Gamma.T @ QG + system.R * np.eye(N))
    H = 0.5 * (H + H.T)  # exactly symmetric
    X_target = np.tile(system.x_target, N)
    return CondensedQP(Phi=Phi, Gamma=Gamma, H=H, F_x0=2.0 * Phi.T @ QG, f_target=-2.0 * X_target @ QG)


def linear_optima(
    system: System, x0: np.ndarray, progress: Callable[[int], None] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(u* [B, N], J* [B], kkt_residual [B]) of a linear system for x0 [B, n]: DAQP, one solve each, no labels
    (dataset validation re-solves with this)."""
    import daqp

    qp = condensed_qp(system)
    x0 = np.asarray(x0, dtype=float).reshape(-1, system.n)
    N = system.steps
    F = qp.linear_term(x0)
    # DAQP: the bounds are "simple bounds" because A has no rows; H is factorised once in setup
    model = daqp.Model()
    model.setup(qp.H, np.zeros(N), np.zeros((0, N)), np.full(N, system.u_max), np.full(N, system.u_min))
    # Resetting the active set before every solve makes each answer depend on its own x0 only (the same
    # bits whatever the batch order); it is also faster here than warm-starting from the previous instance.
    cold = np.zeros(N, dtype=np.int32)
    U = np.empty((len(x0), N))
    for i in range(len(x0)):
        model.update(f=F[i].copy(), sense=cold)
        u, _, exitflag, _ = model.solve()
        if exitflag != 1:
            raise RuntimeError(f"DAQP failed on {system.name} x0={x0[i].tolist()} (exitflag {exitflag})")
        U[i] = u
        if progress is not None and (i + 1) % 256 == 0:
            progress(256)
    if progress is not None and len(x0) % 256:
        progress(len(x0) % 256)
    U = snap_to_bounds(system, U, SNAP_TOL_QP)
    J = trajectory_cost(system, simulate(system, x0, U), U)
    return U, J, kkt_residual(system, U, U @ qp.H + F)  # grad of 1/2 u'Hu + f'u; H symmetric


def solve_linear(
    system: System, x0: np.ndarray, decimals: int = 2, progress: Callable[[int], None] | None = None
) -> ReferenceSolution:
    """Exact optima of a linear system for a batch of initial states x0 [B, n] (DAQP, one solve each)."""
    x0 = np.asarray(x0, dtype=float).reshape(-1, system.n)
    U, J, residual = linear_optima(system, x0, progress)
    u_label, J_label = round_for_label(system, x0, U, condensed_qp(system).H, decimals)
    return ReferenceSolution(
        u=U,
        J=J,
        u_label=u_label,
        J_label=J_label,
        kkt_residual=residual,
        starts_agreed=np.ones(len(x0), dtype=int),
        starts_total=1,
        solver=f"condensed QP, DAQP {_version('daqp')} (exact active set)",
    )


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


# ----------------------------------------------------------------------------------------------------------
# Nonlinear systems: multiple shooting + IPOPT, several starts, Newton polish


@dataclass(frozen=True, eq=False)
class _Nlp:
    solver: object  # casadi nlpsol over (x_0, u_0, ..., x_N) with parameter x0
    lbx: np.ndarray
    ubx: np.ndarray
    derivatives: object  # casadi Function (u[N], x0[n]) -> (J, dJ/du, d2J/du2), single shooting


def _box(n: int, N: int, u_min: float, u_max: float) -> tuple[np.ndarray, np.ndarray]:
    """(lbx, ubx) of the multiple-shooting variables (x_0, u_0, ..., x_N): states free, controls boxed."""
    lbx, ubx = [], []
    for _ in range(N):
        lbx += [-np.inf] * n + [u_min]
        ubx += [np.inf] * n + [u_max]
    return np.array(lbx + [-np.inf] * n), np.array(ubx + [np.inf] * n)


def _shooting(
    name: str, n: int, N: int, step: Callable, cost: Callable, p, x0, plugin: str = "ipopt"
) -> tuple[object, object, object, object]:
    """(solver, derivatives, rollout, cost) of one problem; `step(x, u)` and `cost(states, controls)`
    build CasADi expressions, p is the NLP parameter and x0 the initial state as an expression of it.
    plugin: "ipopt" (IPOPT_OPTIONS) or "fatrop" (FATROP_OPTIONS: every constraint here is an equality).

    derivatives: (u[N], p) -> (J, dJ/du, d2J/du2), single shooting: the exact derivatives of the cost the
    grader computes, for the polish and the KKT residual. rollout: (u[N], p) -> the states [n, N+1].
    cost: (u[N], p) -> J alone, the same bits as derivatives' J (checked) at ~1/20 of its price (N = 40:
    2,700 instructions against 165,000 with the Hessian; 0.06 ms against 1.25 ms, measured).
    """
    import casadi as ca

    X = [ca.SX.sym(f"x_{k}", n) for k in range(N + 1)]
    U = [ca.SX.sym(f"u_{k}") for k in range(N)]
    w = []
    for k in range(N):
        w += [X[k], U[k]]
    w.append(X[N])
    g = [X[0] - x0] + [X[k + 1] - step(X[k], U[k]) for k in range(N)]
    nlp = {"x": ca.vertcat(*w), "p": p, "f": cost(X, U), "g": ca.vertcat(*g)}
    options = (
        IPOPT_OPTIONS if plugin == "ipopt" else {**FATROP_OPTIONS, "equality": [True] * nlp["g"].numel()}
    )
    solver = ca.nlpsol(f"ms_{name}", plugin, nlp, options)

    u_ss = ca.SX.sym("u", N)
    states = [x0]
    for k in range(N):
        states.append(step(states[k], u_ss[k]))
    J_ss = cost(states, [u_ss[k] for k in range(N)])
    H_ss, grad_ss = ca.hessian(J_ss, u_ss)
    derivatives = ca.Function("derivatives", [u_ss, p], [J_ss, grad_ss, H_ss])
    rollout = ca.Function("rollout", [u_ss, p], [ca.horzcat(*states)])
    return solver, derivatives, rollout, ca.Function("cost", [u_ss, p], [J_ss])


def _quadratic_cost(N: int, Q, R, Qf, xt) -> Callable:
    """cost(states, controls): the cost of lib/control/systems.py, term by term, on CasADi expressions."""
    import casadi as ca

    def cost(states, controls):
        J = 0
        for k in range(N):
            e = states[k] - xt
            J += ca.mtimes([e.T, Q, e]) + R * controls[k] ** 2
        e = states[N] - xt
        return J + ca.mtimes([e.T, Qf, e])

    return cost


@functools.cache
def _nlp(system: System) -> _Nlp:
    import casadi as ca

    n, N = system.n, system.steps
    xs, us = ca.SX.sym("x", n), ca.SX.sym("u")
    step = ca.Function(
        "step", [xs, us], [ca.vertcat(*rk4_step(system.rhs, ca.vertsplit(xs), us, system.dt, ca))]
    )
    cost = _quadratic_cost(N, ca.DM(system.Q), system.R, ca.DM(system.Qf), ca.DM(system.x_target))
    p = ca.SX.sym("x0", n)
    solver, derivatives, _, _ = _shooting(system.name, n, N, step, cost, p, p)
    lbx, ubx = _box(n, N, system.u_min, system.u_max)
    return _Nlp(solver=solver, lbx=lbx, ubx=ubx, derivatives=derivatives)


def _cold_start(system: System, x0: np.ndarray, name: str, rng: np.random.Generator) -> np.ndarray:
    """The controls [N] of one cold start (module docstring) for one instance x0 [n]."""
    N, half = system.steps, system.steps // 2
    if name == "zero":
        return np.zeros(N)
    if name == "clipped_lqr":
        return clipped_lqr_controls(system, x0[None])[0]
    up = np.where(np.arange(N) < half, system.u_max, system.u_min)
    if name == "bang_up":
        return up
    if name == "bang_down":
        return system.u_max + system.u_min - up  # mirror of bang_up
    return rng.uniform(system.u_min, system.u_max, N)  # random


def start_controls(system: System, x0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The IPOPT starts for one instance x0 [n], in START_NAMES order: [len(START_NAMES), N]."""
    return np.stack([_cold_start(system, x0, name, rng) for name in START_NAMES])


def _derivatives(
    nlp: _Nlp | _FamilyNlp, u: np.ndarray, p: np.ndarray
) -> tuple[float, np.ndarray, np.ndarray]:
    # p: the NLP parameter, x0 for a fixed system, problem_parameters(system, x0) for a family member
    J, grad, H = nlp.derivatives(u, p)
    return float(J), np.asarray(grad).ravel(), np.asarray(H)


def _newton_step(system: System, u: np.ndarray, grad: np.ndarray, H: np.ndarray) -> np.ndarray | None:
    """The Newton point on the free controls with the active set fixed, or None (Hessian not PD there).

    A free control the step would push across a bound joins the active set at that bound (its move d_c is
    then fixed) and the step of the others is recomputed: H_ff d_f = -(g_f + H_fc d_c).
    """
    free = (u > system.u_min) & (u < system.u_max)
    d = np.zeros_like(u)
    while free.any():
        fixed = ~free
        try:
            factor = scipy.linalg.cho_factor(H[np.ix_(free, free)])
        except np.linalg.LinAlgError:
            return None
        d[free] = -scipy.linalg.cho_solve(factor, grad[free] + H[np.ix_(free, fixed)] @ d[fixed])
        trial = u + d
        crossing = free & ((trial > system.u_max) | (trial < system.u_min))
        if not crossing.any():
            return trial
        d[crossing] = np.where(trial[crossing] > system.u_max, system.u_max, system.u_min) - u[crossing]
        free &= ~crossing
    return u + d


def _polish(system: System, nlp: _Nlp | _FamilyNlp, u: np.ndarray, p: np.ndarray):
    """Newton steps on the free controls (`_newton_step`); returns (u, grad, H) at the final u.

    A step is kept when it lowers the KKT residual without raising J beyond rounding (1e-12 relative):
    near the optimum a Newton step changes J by ~1e-15, below what float sums resolve.
    """
    J, grad, H = _derivatives(nlp, u, p)
    residual = kkt_residual(system, u[None], grad[None])[0]
    for _ in range(POLISH_STEPS):
        if residual < 1e-13:
            break
        trial = _newton_step(system, u, grad, H)
        if trial is None:
            break
        trial = snap_to_bounds(system, trial, SNAP_TOL_NLP)
        J_trial, grad_trial, H_trial = _derivatives(nlp, trial, p)
        residual_trial = kkt_residual(system, trial[None], grad_trial[None])[0]
        if not (J_trial <= J + 1e-12 * max(1.0, abs(J)) and residual_trial < residual):
            break
        u, J, grad, H, residual = trial, J_trial, grad_trial, H_trial, residual_trial
    return u, grad, H


def _solve_one_nonlinear(system: System, x0: np.ndarray, rng: np.random.Generator) -> tuple:
    """(u*, J*, kkt_residual, starts_agreed, Hessian at u*) for one initial state x0 [n]."""
    nlp = _nlp(system)
    n, N = system.n, system.steps
    starts = start_controls(system, x0, rng)
    guesses = simulate(system, np.repeat(x0[None], len(starts), 0), starts)  # consistent state guesses
    candidates = []
    for s in range(len(starts)):
        w0 = np.concatenate(
            [np.concatenate([guesses[s, :N], starts[s][:, None]], axis=1).ravel(), guesses[s, N]]
        )
        sol = nlp.solver(x0=w0, p=x0, lbx=nlp.lbx, ubx=nlp.ubx, lbg=0.0, ubg=0.0)
        if nlp.solver.stats()["success"]:
            w = np.asarray(sol["x"]).ravel()
            candidates.append(w[n : N * (n + 1) : n + 1])  # u_k sits after x_k in (x_0, u_0, x_1, u_1, ...)
    if not candidates:
        raise RuntimeError(
            f"IPOPT converged from none of {len(starts)} starts on {system.name} x0={x0.tolist()}"
        )
    U = snap_to_bounds(system, np.stack(candidates), SNAP_TOL_NLP)
    J = trajectory_cost(system, simulate(system, np.repeat(x0[None], len(U), 0), U), U)
    best = int(np.argmin(J))
    agreed = int(np.sum(J - J[best] <= AGREE_RTOL * max(1.0, J[best])))
    u, grad, H = _polish(system, nlp, U[best], x0)
    J_best = trajectory_cost(system, simulate(system, x0[None], u[None]), u[None])[0]
    return u, J_best, kkt_residual(system, u[None], grad[None])[0], agreed, H


def _solve_instances(system: System, x0: np.ndarray, seed: int, first_index: int) -> list[tuple]:
    rngs = [np.random.default_rng([seed, first_index + i]) for i in range(len(x0))]
    return [_solve_one_nonlinear(system, x0[i], rngs[i]) for i in range(len(x0))]


def _solve_in_worker(name: str, x0: np.ndarray, seed: int, first_index: int) -> list[tuple]:
    # runs in a worker process: systems travel by name, the NLP is built once per process (cached)
    return _solve_instances(SYSTEMS[name], x0, seed, first_index)


def solve_nonlinear(
    system: System,
    x0: np.ndarray,
    decimals: int = 2,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> ReferenceSolution:
    """Best-of-starts optima of a nonlinear system for x0 [B, n]; instance i's random start uses (seed, i).

    Each instance is solved independently of the others, so the result does not depend on `workers`.
    Worker processes look the system up by name, so `workers > 1` needs a system from SYSTEMS.
    """
    import casadi

    x0 = np.asarray(x0, dtype=float).reshape(-1, system.n)
    chunks = [(i, x0[i : i + _CHUNK]) for i in range(0, len(x0), _CHUNK)]
    results: list[tuple] = []
    if workers <= 1 or len(chunks) <= 1:
        for first, chunk in chunks:
            results += _solve_instances(system, chunk, seed, first)
            if progress is not None:
                progress(len(chunk))
    else:
        if SYSTEMS.get(system.name) is not system:
            raise ValueError(f"workers > 1 needs a registered system; '{system.name}' is not SYSTEMS' own")
        # spawn, not fork: a clean interpreter per worker on every OS (fork is unsafe with threads)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(_solve_in_worker, system.name, chunk, seed, first) for first, chunk in chunks
            ]
            for future, (_, chunk) in zip(
                futures, chunks, strict=True
            ):  # in order: results stay aligned with x0
                results += future.result()
                if progress is not None:
                    progress(len(chunk))
    N = system.steps
    U = np.array([r[0] for r in results]).reshape(-1, N)
    hessians = np.array([r[4] for r in results]).reshape(-1, N, N)
    u_label, J_label = round_for_label(system, x0, U, hessians, decimals)
    return ReferenceSolution(
        u=U,
        J=np.array([r[1] for r in results], dtype=float),
        u_label=u_label,
        J_label=J_label,
        kkt_residual=np.array([r[2] for r in results], dtype=float),
        starts_agreed=np.array([r[3] for r in results], dtype=int),
        starts_total=len(START_NAMES),
        solver=f"multiple shooting, CasADi {casadi.__version__} + IPOPT, best of {len(START_NAMES)} starts "
        f"({', '.join(START_NAMES)}), Newton polish",
    )


def solve_reference(
    system: System,
    x0: np.ndarray,
    decimals: int = 2,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> ReferenceSolution:
    """Optimal controls for x0 [B, n]: the exact QP for linear systems, multi-start IPOPT otherwise."""
    if system.is_linear:
        return solve_linear(system, x0, decimals=decimals, progress=progress)
    return solve_nonlinear(system, x0, decimals=decimals, seed=seed, workers=workers, progress=progress)


# ----------------------------------------------------------------------------------------------------------
# Families: one solver per (family, N), warm starts from solved neighbours, cold starts until agreement


@dataclass(frozen=True, eq=False)
class _FamilyNlp:
    solver: object  # casadi nlpsol over (x_0, u_0, ..., x_N) with parameter p = problem_parameters(...)
    derivatives: object  # casadi Function (u[N], p) -> (J, dJ/du, d2J/du2), single shooting
    rollout: object  # casadi Function (u[N], p) -> states [n, N+1]
    cost: object  # casadi Function (u[N], p) -> J, derivatives' first output alone (a start's cost)
    clipped_lqr: object  # casadi Function (K[n], p, (u_min, u_max)) -> the clipped-LQR start u [N]


def problem_parameters(system: System, x0: np.ndarray) -> np.ndarray:
    """The parameter p of a family's NLP for one member and initial state x0 [n]: (x0, dt, the constants in
    their order, Q, R, Qf, x_target); Q and Qf column by column, the order casadi.reshape reads them in."""
    return np.concatenate(
        [
            x0,
            [system.dt],
            [value for _, value in system.constants],
            system.Q.ravel(order="F"),
            [system.R],
            system.Qf.ravel(order="F"),
            system.x_target,
        ]
    )


@functools.cache
def _family_nlp(family: str, dynamics: Callable, constants: tuple[str, ...], n: int, N: int) -> _FamilyNlp:
    """The NLP every member of a family with horizon N shares, its problem data as the parameter p
    (problem_parameters; the bounds are lbx/ubx at solve time): built once per (family, N) and process."""
    import casadi as ca

    m = len(constants)
    # p = (x0 [n], dt, constants [m], Q [n*n], R, Qf [n*n], x_target [n])
    p = ca.SX.sym("p", 2 * n + 2 + m + 2 * n * n)
    x0, dt = p[:n], p[n]
    values = dict(zip(constants, ca.vertsplit(p[n + 1 : n + 1 + m]), strict=True))
    at = n + 1 + m
    Q, R = ca.reshape(p[at : at + n * n], n, n), p[at + n * n]
    Qf, xt = ca.reshape(p[at + n * n + 1 : at + 2 * n * n + 1], n, n), p[at + 2 * n * n + 1 :]
    xs, us = ca.SX.sym("x", n), ca.SX.sym("u")

    def rhs(x, u, ops):
        return dynamics(x, u, ops, values)

    step = ca.Function("step", [xs, us, p], [ca.vertcat(*rk4_step(rhs, ca.vertsplit(xs), us, dt, ca))])
    solver, derivatives, rollout, cost = _shooting(
        f"{family}_{N}", n, N, lambda x, u: step(x, u, p), _quadratic_cost(N, Q, R, Qf, xt), p, x0, "fatrop"
    )
    # clipped_lqr_controls in closed loop, here because numpy's loop over N steps of one instance costs about
    # as much as an IPOPT solve (2 ms of a 17 ms record, measured)
    K, bounds = ca.SX.sym("K", n), ca.SX.sym("bounds", 2)
    x, controls = x0, []
    for _ in range(N):
        controls.append(ca.fmin(ca.fmax(-ca.dot(K, x - xt), bounds[0]), bounds[1]))
        x = step(x, controls[-1], p)
    clipped_lqr = ca.Function("clipped_lqr", [K, p, bounds], [ca.vertcat(*controls)])
    return _FamilyNlp(
        solver=solver, derivatives=derivatives, rollout=rollout, cost=cost, clipped_lqr=clipped_lqr
    )


def member_nlp(system: System) -> _FamilyNlp:
    """The NLP a family member is solved with: one per (family, N) and process, built on first use (the
    benchmark builds them first, to time them apart)."""
    return _family_nlp(
        system.family, system.dynamics, tuple(name for name, _ in system.constants), system.n, system.steps
    )


def _member_lqr_gain(system: System) -> np.ndarray:
    """euler_lqr_gain(system)[0] (K [n]) for a family member, not cached (every member is a new System).

    The Riccati equation by structure-preserving doubling (Chu et al. 2004: A_k, G_k, H_k with H_k -> P,
    quadratically): 0.3 ms against scipy's solve_discrete_are's 0.7 ms (measured on van_der_pol_family), K
    the same to 2e-14 relative on 300 members of it (8e-14 two_mass_spring_family). Not converged in 60
    doublings (none of 6,000 members of the three families): scipy's.
    """
    A = np.eye(system.n) + system.dt * system.A_cont
    B = system.dt * system.B_cont
    G, H, Ak, eye = B @ B.T / system.R, system.Q.astype(float), A, np.eye(system.n)
    for _ in range(60):
        V = np.linalg.solve(eye + G @ H, np.concatenate([Ak, G], axis=1))  # (I + G H)^-1 [A_k, G_k]
        H_next = H + Ak.T @ H @ V[:, : system.n]
        G = G + Ak @ V[:, system.n :] @ Ak.T
        Ak = Ak @ V[:, : system.n]
        converged = np.abs(H_next - H).max() <= 1e-15 * np.abs(H_next).max()
        H = H_next
        if converged and np.all(np.isfinite(H)):
            return np.linalg.solve(system.R + B.T @ H @ B, B.T @ H @ A)[0]
    return euler_lqr_gain.__wrapped__(system)[0]


def _agreed(costs: list[float]) -> int:
    """How many of the costs lie within AGREE_RTOL * max(1, J*) of the lowest, J*."""
    best = min(costs)
    return sum(J - best <= AGREE_RTOL * max(1.0, best) for J in costs)


def _solve_member(
    system: System, x0: np.ndarray, warm: np.ndarray | None, rng: np.random.Generator, decimals: int
) -> tuple:
    """(u*, J*, u_label, J_label, kkt_residual, starts_agreed, starts_total) of one member and x0 [n], by the
    rule of `solve_family`; `warm` holds the start controls from a solved neighbour, None for a chain's root."""
    nlp = member_nlp(system)
    n, N = system.n, system.steps
    p = problem_parameters(system, x0)
    lbx, ubx = _box(n, N, system.u_min, system.u_max)
    candidates: list[np.ndarray] = []
    costs: list[float] = []
    starts = 0

    def run(u_start: np.ndarray) -> None:
        states = np.asarray(nlp.rollout(u_start, p)).T  # a dynamically consistent state guess
        w0 = np.concatenate([np.concatenate([states[:N], u_start[:, None]], axis=1).ravel(), states[N]])
        sol = nlp.solver(x0=w0, p=p, lbx=lbx, ubx=ubx, lbg=0.0, ubg=0.0)
        if nlp.solver.stats()["success"]:
            w = np.asarray(sol["x"]).ravel()
            u = snap_to_bounds(system, w[n : N * (n + 1) : n + 1], SNAP_TOL_NLP)
            candidates.append(u)
            costs.append(float(nlp.cost(u, p)))

    def cold_start(name: str) -> np.ndarray:
        if name != "clipped_lqr":
            return _cold_start(system, x0, name, rng)
        K = _member_lqr_gain(system)
        return np.asarray(nlp.clipped_lqr(K, p, [system.u_min, system.u_max])).ravel()

    if warm is not None:
        run(warm)
        starts += 1
    for name in START_NAMES:
        if warm is not None and costs and _agreed(costs) >= FAMILY_AGREE:
            best = candidates[int(np.argmin(costs))]
            if np.mean((best <= system.u_min) | (best >= system.u_max)) < FAMILY_BANG_BANG:
                break
        run(cold_start(name))
        starts += 1
    if not candidates:
        raise RuntimeError(f"fatrop converged from none of {starts} starts on {system.name} x0={x0.tolist()}")
    u, grad, H = _polish(system, nlp, candidates[int(np.argmin(costs))], p)
    J = trajectory_cost(system, simulate(system, x0[None], u[None]), u[None])[0]
    u_label, J_label = round_for_label(system, x0[None], u[None], H[None], decimals, np.array([J]))
    residual = kkt_residual(system, u[None], grad[None])[0]
    return u, J, u_label[0], J_label[0], residual, _agreed(costs), starts


def _chain_order(features: np.ndarray) -> tuple[list[int], list[int]]:
    """(order, parent): a chain's records in the order they are solved, and the record each one starts from
    (-1 for the first). Prim's order on standardized features: the first record first, then always the
    unsolved record nearest to a solved one, which is its parent."""
    spread = features.std(axis=0)
    z = (features - features.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    distance = np.linalg.norm(z[:, None] - z[None], axis=2)
    order, parent = [0], [-1] * len(z)
    solved = np.zeros(len(z), dtype=bool)
    solved[0] = True
    nearest, via = distance[0].copy(), np.zeros(len(z), dtype=int)
    while not solved.all():
        j = int(np.argmin(np.where(solved, np.inf, nearest)))
        order.append(j)
        parent[j] = int(via[j])
        solved[j] = True
        closer = ~solved & (distance[j] < nearest)
        nearest[closer], via[closer] = distance[j, closer], j
    return order, parent


def _solve_chain(
    systems: Sequence[System], x0: np.ndarray, indices: Sequence[int], seed: int, decimals: int
) -> list[tuple]:
    """The records of one chain (same family and N), in the order given; record i's random start uses the
    generator (seed, indices[i]). Depends on nothing else: the same answer in any process."""
    from threadpoolctl import threadpool_limits

    # OpenBLAS (numpy's, scipy's) wakes its threads even for the 2x2 Riccati solve of the clipped-LQR start
    # and then leaves them spinning: one thread makes that solve 15.5 -> 0.7 ms (measured, van_der_pol_family,
    # 2 cores), and stops the spinning threads from slowing the NLP solves after it. On these sizes OpenBLAS
    # computes with one thread either way: the answers are the same bits (checked).
    with threadpool_limits(1):
        return _solve_chain_in_order(systems, x0, indices, seed, decimals)


def _solve_chain_in_order(
    systems: Sequence[System], x0: np.ndarray, indices: Sequence[int], seed: int, decimals: int
) -> list[tuple]:
    features = np.stack([np.append(problem_parameters(s, x0[i]), s.u_max) for i, s in enumerate(systems)])
    order, parent = _chain_order(features)
    results: list[tuple] = [()] * len(systems)
    for j in order:
        system, warm = systems[j], None
        if parent[j] >= 0:  # the parent's optimum, its bound-to-bound swing scaled to this member's bounds
            warm = np.clip(
                results[parent[j]][0] * (system.u_max / systems[parent[j]].u_max), system.u_min, system.u_max
            )
        rng = np.random.default_rng([seed, indices[j]])
        results[j] = _solve_member(system, x0[j], warm, rng, decimals)
    return results


def solve_family(
    systems: Sequence[System],
    x0: np.ndarray,
    decimals: int = 2,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[ReferenceSolution]:
    """The certified optimum of each member's own problem (systems [B] of one family, x0 [B, n]): one
    ReferenceSolution of one instance per record, in input order (horizons differ between members).

    One NLP per (family, N) and process, the problem data its parameter (`_family_nlp`). Records are split
    into chains: those with the same N, in input order, FAMILY_CHAIN at a time. A chain is solved in Prim's
    order over its standardized problem parameters and x0 (`_chain_order`), and the rule is:
      - its first record: the 5 cold starts of START_NAMES, as solve_nonlinear (starts_total 5);
      - every other record: a warm start from the optimum of its nearest already-solved record (controls
        scaled by the ratio of the bounds), then the cold starts in START_NAMES order, one at a time, only
        until FAMILY_AGREE (3) converged starts agree on the lowest cost found (within AGREE_RTOL * max(1, J*):
        the same agreement as solve_nonlinear), unless that optimum is bang-bang (at least FAMILY_BANG_BANG of
        its controls on a bound); when they never agree, or it is bang-bang, all 5 run (starts_total 3 to 6).
    The winner is polished, simulated and rounded as in solve_nonlinear; starts_agreed counts the starts that
    reached J*. Costs are compared on CasADi's copy of the cost (the grader's arithmetic to ~1e-15 relative);
    J, J_label come from simulate. Record i's random start uses (seed, i), and a chain depends on nothing
    outside it, so the answers do not depend on `workers`. Linear members are each solved by solve_linear.
    """
    import casadi

    x0 = np.asarray(x0, dtype=float).reshape(len(systems), -1)
    if all(system.is_linear for system in systems):
        return [solve_linear(system, x0[i : i + 1], decimals) for i, system in enumerate(systems)]
    if len({(s.family, s.dynamics, s.n) for s in systems}) != 1 or not systems[0].family:
        raise ValueError("solve_family takes the members of one nonlinear family")
    by_steps: dict[int, list[int]] = {}
    for i, system in enumerate(systems):
        by_steps.setdefault(system.steps, []).append(i)
    chains = [
        members[k : k + FAMILY_CHAIN]
        for members in by_steps.values()
        for k in range(0, len(members), FAMILY_CHAIN)
    ]
    tasks = [([systems[i] for i in chain], x0[chain], chain, seed, decimals) for chain in chains]
    results: list[tuple] = [()] * len(systems)
    if workers <= 1 or len(tasks) <= 1:
        outcomes = (_solve_chain(*task) for task in tasks)
        for chain, outcome in zip(chains, outcomes, strict=True):
            for i, result in zip(chain, outcome, strict=True):
                results[i] = result
            if progress is not None:
                progress(len(chain))
    else:
        ctx = multiprocessing.get_context("spawn")  # as solve_nonlinear
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [pool.submit(_solve_chain, *task) for task in tasks]
            for chain, future in zip(chains, futures, strict=True):
                for i, result in zip(chain, future.result(), strict=True):
                    results[i] = result
                if progress is not None:
                    progress(len(chain))
    solver = (
        f"multiple shooting, CasADi {casadi.__version__} + fatrop, one NLP per (family, N); a warm start from "
        f"the nearest solved member, then cold starts ({', '.join(START_NAMES)}) until {FAMILY_AGREE} starts "
        f"agree (all cold on a chain's first member, or where >= {FAMILY_BANG_BANG:.0%} of the controls are on a "
        "bound), Newton polish"
    )
    return [
        ReferenceSolution(
            u=u[None],
            J=np.array([J]),
            u_label=u_label[None],
            J_label=np.array([J_label]),
            kkt_residual=np.array([residual]),
            starts_agreed=np.array([agreed]),
            starts_total=total,
            solver=solver,
        )
        for u, J, u_label, J_label, residual, agreed, total in results
    ]


# ----------------------------------------------------------------------------------------------------------
# The old labels (baseline)


@functools.cache
def euler_lqr_gain(system: System) -> np.ndarray:
    """Infinite-horizon discrete LQR gain K [1, n] on the forward-Euler model (the old research code)."""
    A_d = np.eye(system.n) + system.dt * system.A_cont
    B_d = system.dt * system.B_cont
    R = np.array([[system.R]])
    P = scipy.linalg.solve_discrete_are(A_d, B_d, system.Q, R)
    return np.linalg.solve(R + B_d.T @ P @ B_d, B_d.T @ P @ A_d)


def clipped_lqr_controls(system: System, x0: np.ndarray) -> np.ndarray:
    """u_k = clip(-K (x_k - x_target)) in closed loop on the exact model; x0 [B, n] -> u [B, N]."""
    K = euler_lqr_gain(system)[0]
    x = np.asarray(x0, dtype=float).reshape(-1, system.n)
    U = np.empty((len(x), system.steps))
    for k in range(system.steps):
        U[:, k] = np.clip(-(x - system.x_target) @ K, system.u_min, system.u_max)
        x = system.step(x, U[:, k])
    return U
