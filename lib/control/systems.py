"""Control systems, the one simulator and the one cost (docs/ARCHITECTURE.md, "The control core").

A system is data (bounds, horizon, weights, target, sampling boxes, prompt text) plus its discrete-time step.
Linear systems use the exact zero-order-hold (ZOH) discretisation: with u held constant over a step of dt,
    x_{k+1} = A x_k + B u_k,   A = e^{Ac dt},   B = integral_0^dt e^{Ac s} ds Bc,
both read off one matrix exponential expm([[Ac, Bc], [0, 0]] dt) = [[A, B], [0, I]].
Nonlinear systems use one classical RK4 step of length dt per control step (u constant over the step);
`rk4_step` is written once and evaluated both on numpy arrays (here) and on CasADi symbols (references.py),
so the optimiser and the grader integrate the same arithmetic.

`simulate` is the only simulator: labels, rewards, metrics and plots all call it. It never clips anything:
a control outside the bounds is simulated as written (metrics.py then reports it as infeasible).

Cost, the same everywhere (labels, metrics, rewards, prompts), with e_k = x_k - x_target:
    J(x_0, u) = sum_{k=0}^{N-1} ( e_k' Q e_k + R u_k^2 ) + e_N' Qf e_N
a plain sum over the N steps: no dt factor and no 1/2, so the prompt can state it exactly as computed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import scipy.linalg

from lib.common.errors import UsageError

FEASIBILITY_TOL = 1e-6  # a control (or state) counts as within its bound up to this much beyond it

# f(x_components, u, ops) -> dx/dt components; ops is numpy or casadi (both have sin, cos)
Rhs = Callable[[Sequence, object, ModuleType], Sequence]
# the same with the physical constants as a last argument {name: value}: numbers, or CasADi symbols when one
# solver serves every member of a family (lib/control/references.py)
Dynamics = Callable[[Sequence, object, ModuleType, Mapping], Sequence]


@dataclass(frozen=True, eq=False)  # eq=False: hashable by identity, so per-system caches can key on it
class System:
    name: str
    title: str  # short human name for the prompt
    description: str  # physical description and dynamics, for the prompt
    state_names: tuple[str, ...]
    state_units: tuple[str, ...]
    control_name: str
    control_unit: str
    dt: float
    steps: int
    u_min: float
    u_max: float
    Q: np.ndarray  # [n, n] stage weight on x - x_target
    R: float  # stage weight on u^2
    Qf: np.ndarray  # [n, n] terminal weight on x_N - x_target
    x_target: np.ndarray  # [n]
    x0_box: tuple[tuple[float, float], ...]  # default initial-state box, (low, high) per state
    x0_box_wide: tuple[tuple[float, float], ...]  # the wider box (--wide)
    # Continuous-time model x' = Ac x + Bc u: the exact model of a linear system, the linearisation at
    # (x_target, u = 0) for a nonlinear one (used only by the clipped-LQR baseline).
    A_cont: np.ndarray
    B_cont: np.ndarray  # [n, 1]
    A: np.ndarray | None = None  # [n, n] exact ZOH matrices of a linear system; None when nonlinear
    B: np.ndarray | None = None  # [n, 1]
    dynamics: Dynamics | None = None  # continuous-time right-hand side of a nonlinear system (RK4-integrated)
    ode: str = ""  # rhs as text, one "name' = expression" per state ("*" and "^"), for the compact prompt
    constants: tuple[tuple[str, float], ...] = ()  # the physical constants `dynamics` reads, by name
    family: str = (
        ""  # the family this problem was drawn from (lib/control/families.py); "" for a fixed system
    )

    @property
    def n(self) -> int:
        return len(self.state_names)

    @property
    def is_linear(self) -> bool:
        return self.A is not None

    @property
    def rhs(self) -> Rhs | None:
        """The right-hand side with this system's constants: f(x_components, u, ops)."""
        if self.dynamics is None:
            return None
        constants = dict(self.constants)
        return lambda x, u, ops: self.dynamics(x, u, ops, constants)

    def step(self, x: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One discrete step for a batch: x [B, n], u [B] -> x_next [B, n]."""
        if self.A is not None:
            return x @ self.A.T + u[:, None] * self.B[:, 0]
        cols = rk4_step(self.rhs, [x[:, i] for i in range(self.n)], u, self.dt, np)
        return np.stack(cols, axis=1)


def rk4_step(rhs: Rhs, x: Sequence, u, dt: float, ops: ModuleType) -> list:
    """Classical RK4 over one step with u held constant; x is a list of state components.

    Written on components (not vectors) so the same lines run on numpy columns and on CasADi scalars.
    """
    k1 = rhs(x, u, ops)
    k2 = rhs([xi + (0.5 * dt) * ki for xi, ki in zip(x, k1, strict=True)], u, ops)
    k3 = rhs([xi + (0.5 * dt) * ki for xi, ki in zip(x, k2, strict=True)], u, ops)
    k4 = rhs([xi + dt * ki for xi, ki in zip(x, k3, strict=True)], u, ops)
    return [
        xi + (dt / 6.0) * (a + 2.0 * b + 2.0 * c + d)
        for xi, a, b, c, d in zip(x, k1, k2, k3, k4, strict=True)
    ]


def zoh(A_cont: np.ndarray, B_cont: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Exact zero-order-hold discretisation via one matrix exponential (see the module docstring)."""
    n, m = B_cont.shape
    M = np.zeros((n + m, n + m))
    M[:n, :n] = A_cont
    M[:n, n:] = B_cont
    E = scipy.linalg.expm(M * dt)
    return E[:n, :n], E[:n, n:]


def simulate(system: System, x0: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Roll the system out: x0 [B, n], u [B, N] -> states [B, N+1, n] (states[:, 0] = x0). No clipping."""
    x0 = np.asarray(x0, dtype=float)
    u = np.asarray(u, dtype=float)
    batch, steps = u.shape
    states = np.empty((batch, steps + 1, system.n))
    states[:, 0] = x0
    # a diverging rollout (controls far outside the bounds) may overflow to inf/nan; that is its answer
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(steps):
            states[:, k + 1] = system.step(states[:, k], u[:, k])
    return states


def trajectory_cost(system: System, states: np.ndarray, u: np.ndarray) -> np.ndarray:
    """J = sum_{k<N} (e_k'Q e_k + R u_k^2) + e_N'Qf e_N with e = x - x_target; states [B,N+1,n], u [B,N]."""
    e = states - system.x_target
    with np.errstate(over="ignore", invalid="ignore"):
        stage = np.einsum("bki,ij,bkj->b", e[:, :-1], system.Q, e[:, :-1]) + system.R * np.sum(u * u, axis=1)
        terminal = np.einsum("bi,ij,bj->b", e[:, -1], system.Qf, e[:, -1])
    return stage + terminal


# ----------------------------------------------------------------------------------------------------------
# The systems


def double_integrator(
    name: str = "double_integrator",
    dt: float = 0.1,
    steps: int = 50,
    u_max: float = 3.0,
    q: float = 1.0,
    r: float = 0.1,
    qf: float = 10.0,
    p_target: float = 0.0,
    family: str = "",
) -> System:
    """The double integrator; the fixed systems take the defaults, a family member its drawn values."""
    Ac = np.array([[0.0, 1.0], [0.0, 0.0]])
    Bc = np.array([[0.0], [1.0]])
    A, B = zoh(Ac, Bc, dt)  # = [[1, dt], [0, 1]], [[dt^2/2], [dt]]; dt = 0.1: [[0.005], [0.1]]
    return System(
        name=name,
        title="double integrator"
        if steps == 50 or family
        else f"double integrator ({steps} steps of {dt:g} s)",
        description=(
            "A unit mass moves on a frictionless line: p is its position, v its velocity, and the control is "
            "its acceleration. Dynamics p'' = u, discretised exactly with zero-order hold (u constant over "
            f"each step): p_{{k+1}} = p_k + {dt:g} v_k + {dt * dt / 2:g} u_k, v_{{k+1}} = v_k + {dt:g} u_k."
        ),
        state_names=("p", "v"),
        state_units=("m", "m/s"),
        control_name="acceleration",
        control_unit="m/s^2",
        dt=dt,
        steps=steps,
        u_min=-u_max,
        u_max=u_max,
        Q=np.diag([q, q]),
        R=r,
        Qf=np.diag([qf, qf]),
        x_target=np.array([p_target, 0.0]),
        x0_box=((-1.0, 1.0), (-1.0, 1.0)) if family else ((-0.8, 0.8), (-0.8, 0.8)),  # the original box
        x0_box_wide=((-2.0, 2.0), (-2.0, 2.0)),
        A_cont=Ac,
        B_cont=Bc,
        A=A,
        B=B,
        family=family,
    )


VDP_MU = 1.0


def van_der_pol_dynamics(x, u, ops, c):
    # x1' = x2,  x2' = mu (1 - x1^2) x2 - x1 + u
    return (x[1], c["mu"] * (1.0 - x[0] * x[0]) * x[1] - x[0] + u)


def van_der_pol(
    name: str = "van_der_pol",
    mu: float = VDP_MU,
    dt: float = 0.1,
    steps: int = 50,
    u_max: float = 1.0,
    q: float = 1.0,
    r: float = 0.1,
    qf: float = 10.0,
    x1_target: float = 0.0,
    family: str = "",
) -> System:
    """The Van der Pol oscillator; the fixed system takes the defaults, a family member its drawn values."""
    return System(
        name=name,
        title="Van der Pol oscillator",
        description=(
            f"A Van der Pol oscillator (mu = {mu:g}): without control it settles on a limit cycle of amplitude "
            "about 2, and the origin is unstable. Dynamics x1' = x2, "
            "x2' = mu (1 - x1^2) x2 - x1 + u, integrated with one classical RK4 step per control step "
            "(u constant over the step)."
        ),
        state_names=("x1", "x2"),
        state_units=("-", "-"),
        control_name="force",
        control_unit="-",
        dt=dt,
        steps=steps,
        u_min=-u_max,
        u_max=u_max,
        Q=np.diag([q, q]),
        R=r,
        Qf=np.diag([qf, qf]),
        x_target=np.array([x1_target, 0.0]),
        x0_box=((-1.0, 1.0), (-1.0, 1.0)),
        x0_box_wide=((-2.0, 2.0), (-2.0, 2.0)),
        A_cont=np.array([[0.0, 1.0], [-1.0, mu]]),  # Jacobian at the origin
        B_cont=np.array([[0.0], [1.0]]),
        dynamics=van_der_pol_dynamics,
        ode=f"x1' = x2, x2' = {'' if mu == 1.0 else f'{mu:g}*'}(1 - x1^2)*x2 - x1 + u",
        constants=(("mu", mu),),
        family=family,
    )


# two masses m1 = m2 = 1 kg joined by a spring k = 1 N/m, force u on mass 1, no friction
MS_K = 1.0
MS_M1 = 1.0
MS_M2 = 1.0


def two_mass_spring(
    name: str = "two_mass_spring",
    k: float = MS_K,
    m1: float = MS_M1,
    m2: float = MS_M2,
    dt: float = 0.2,
    steps: int = 50,
    u_max: float = 1.0,
    q: float = 1.0,
    r: float = 0.1,
    qf: float = 10.0,
    p_target: float = 0.0,
    family: str = "",
) -> System:
    """Two masses and a spring; the fixed system takes the defaults, a family member its drawn values."""
    # state (p1, v1, p2, v2): p1'' = (-k (p1 - p2) + u) / m1,  p2'' = k (p1 - p2) / m2
    Ac = np.array(
        [
            [0.0, 1.0, 0.0, 0.0],
            [-k / m1, 0.0, k / m1, 0.0],
            [0.0, 0.0, 0.0, 1.0],
            [k / m2, 0.0, -k / m2, 0.0],
        ]
    )
    Bc = np.array([[0.0], [1.0 / m1], [0.0], [0.0]])
    A, B = zoh(Ac, Bc, dt)
    if family:
        description = (
            f"Two carts of masses m1 = {m1:g} kg and m2 = {m2:g} kg on a frictionless track are joined by a spring "
            f"of stiffness k = {k:g} N/m (rest length 0: p1 - p2 is the stretch); p1, p2 are their positions, v1, "
            "v2 their velocities, and the control is a force on cart 1 only. Dynamics p1'' = (-k (p1 - p2) + u) / "
            "m1, p2'' = k (p1 - p2) / m2, discretised exactly with zero-order hold (u constant over each step)."
        )
    else:
        description = (
            "Two carts of mass 1 kg on a frictionless track are joined by a spring of stiffness 1 N/m "
            "(rest length 0: p1 - p2 is the stretch); p1, p2 are their positions, v1, v2 their velocities, and "
            "the control is a force on cart 1 only. Dynamics p1'' = -(p1 - p2) + u, p2'' = (p1 - p2), discretised "
            "exactly with zero-order hold (u constant over each step)."
        )
    return System(
        name=name,
        title="two masses and a spring",
        description=description,
        state_names=("p1", "v1", "p2", "v2"),
        state_units=("m", "m/s", "m", "m/s"),
        control_name="force on cart 1",
        control_unit="N",
        dt=dt,
        steps=steps,  # 10 s: the spring mode has period 2 pi / sqrt(2) = 4.4 s, so two oscillations fit
        u_min=-u_max,
        u_max=u_max,
        Q=q * np.eye(4),
        R=r,
        Qf=qf * np.eye(4),
        x_target=np.array([p_target, 0.0, p_target, 0.0]),
        x0_box=((-0.5, 0.5),) * 4,
        x0_box_wide=((-1.0, 1.0),) * 4,
        A_cont=Ac,
        B_cont=Bc,
        A=A,
        B=B,
        family=family,
    )


PEND_G = 9.81  # m/s^2
PEND_L = 1.0  # m
PEND_M = 1.0  # kg
PEND_B = 0.1  # N m s / rad, viscous friction


def pendulum_dynamics(x, u, ops, c):
    # theta measured from hanging down: m l^2 theta'' = -m g l sin(theta) - b theta' + u
    g, length, m, b = c["g"], c["l"], c["m"], c["b"]
    return (
        x[1],
        -(g / length) * ops.sin(x[0]) - (b / (m * length * length)) * x[1] + u / (m * length * length),
    )


def pendulum(
    name: str = "pendulum",
    m: float = PEND_M,
    length: float = PEND_L,
    b: float = PEND_B,
    dt: float = 0.1,
    steps: int = 40,
    u_max: float = 4.0,
    q: float = 1.0,
    r: float = 0.01,
    qf: float = 1.0,
    family: str = "",
) -> System:
    """The pendulum swing-up; the fixed system takes the defaults, a family member its drawn values (q and qf
    scale the fixed system's Q and Qf; the target stays upright)."""
    g, inertia = PEND_G, m * length * length
    # omega' = -(g/l) sin(theta) - b/(m l^2) omega + u/(m l^2), as the compact prompt prints it
    coefficients = (g / length, b / inertia, 1.0 / inertia)
    if family:
        description = (
            f"A pendulum (mass {m:g} kg on a massless rod of {length:g} m, g = {g:g} m/s^2, viscous friction {b:g} "
            "N m s/rad) starts near hanging down and must be swung up to upright. The torque limit "
            f"({u_max:g} N m) is below m g l = {m * g * length:.4g} N m, so it cannot be lifted directly and has to "
            "be pumped. The angle theta is measured from hanging down (upright is theta = pi; the cost does not "
            "wrap angles, so -pi is 2 pi away from the target). Dynamics theta' = omega, omega' = -(g/l) "
            "sin(theta) - b/(m l^2) omega + u/(m l^2), integrated with one classical RK4 step per control step "
            "(u constant over the step)."
        )
        ode = (
            f"theta' = omega, omega' = -{coefficients[0]:g}*sin(theta) - {coefficients[1]:g}*omega + "
            f"{coefficients[2]:g}*u"
        )
    else:
        description = (
            "A pendulum (mass 1 kg on a massless rod of 1 m, g = 9.81 m/s^2, viscous friction 0.1 N m s/rad) "
            "starts near hanging down and must be swung up to upright. The torque limit (4 N m) is well "
            "below m g l = 9.81 N m, so it cannot be lifted directly and has to be pumped. "
            "The angle theta is measured from hanging down (upright is theta = pi; the cost "
            "does not wrap angles, so -pi is 2 pi away from the target). Dynamics theta' = omega, "
            "omega' = -9.81 sin(theta) - 0.1 omega + u, integrated with one classical RK4 step per control "
            "step (u constant over the step)."
        )
        ode = "theta' = omega, omega' = -9.81*sin(theta) - 0.1*omega + u"
    return System(
        name=name,
        title="pendulum swing-up",
        description=description,
        state_names=("theta", "omega"),
        state_units=("rad", "rad/s"),
        control_name="torque",
        control_unit="N m",
        dt=dt,
        # 4 s. An open-loop answer cannot hold the unstable upright for long: each second spent balancing
        # multiplies the effect of a control error by e^{sqrt(g/l)} = e^3.13 ~ 23, so a 2-decimal label that
        # arrives early and balances for 3 s is off by ~1e4 x its rounding. With 4 s and the boxes below the
        # optimal swing-up arrives near the end, and labels stay within 1e-6 of J* (tests/control/test_references.py).
        steps=steps,
        u_min=-u_max,  # below m g l = 9.81 N m: the swing-up needs at least one pump
        u_max=u_max,
        Q=q * np.diag([1.0, 0.1]),
        R=r,
        Qf=qf * np.diag([100.0, 10.0]),
        x_target=np.array([math.pi, 0.0]),
        x0_box=((-0.5, 0.5), (-0.5, 0.5)),
        x0_box_wide=((-1.0, 1.0), (-1.0, 1.0)),  # starts with more energy reach the top early (see steps)
        # linearisation at upright: sin(pi + d) = -d, so d'' = (g/l) d - b/(m l^2) d' + u/(m l^2)
        A_cont=np.array([[0.0, 1.0], [g / length, -b / (m * length**2)]]),
        B_cont=np.array([[0.0], [1.0 / (m * length**2)]]),
        dynamics=pendulum_dynamics,
        ode=ode,
        constants=(("g", g), ("l", length), ("m", m), ("b", b)),
        family=family,
    )


SYSTEMS: dict[str, System] = {
    s.name: s
    for s in (
        double_integrator(),
        van_der_pol(),
        two_mass_spring(),
        pendulum(),
        # the same 5 s horizon in 10 steps of 0.5 s: answers 5x shorter, for CPU demos and quick prototyping;
        # |u| <= 2 so that the bound binds on ~5% of the default box (|u| <= 3 never would: max |u*| 2.4)
        double_integrator("double_integrator_short", dt=0.5, steps=10, u_max=2.0),
    )
}


def get_system(name: str) -> System:
    """The system called `name`; UsageError listing the valid names otherwise."""
    try:
        return SYSTEMS[name]
    except KeyError:
        valid = ", ".join(SYSTEMS)
        raise UsageError(
            f"unknown system '{name}'. Valid systems: {valid}.", fix=f"pick one or more of: {valid}"
        ) from None
