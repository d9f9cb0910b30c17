"""Scoring controls by simulating them (docs/ARCHITECTURE.md, "Metrics"); shared by GRPO rewards and evaluation, vectorised.

Per instance, with the system's own simulator and NO clipping (a control outside the bounds is simulated as
written and the answer is marked infeasible; nothing hides it):
    parsed          exactly N finite numbers inside the tags (lib/control/answer.py)
    violation       max over steps of the control-bound violation, max(u - u_max, u_min - u, 0)
    feasible        parsed and violation <= FEASIBILITY_TOL (1e-6)
    J               the cost of lib/control/systems.py
    gap g           (J - J*) / max(J*, J_floor)
    terminal_error  ||x_N - x_target|| (Euclidean)
    score S         1 - (J - J*) / max(J0 - J*, J_floor), J0 = cost of u = 0. Where J0 - J* >= J_floor this
                    is exactly (J0 - J) / (J0 - J*): 1 for the optimum, 0 for doing nothing. The floor only
                    guards instances where u = 0 is (nearly) optimal, where the plain ratio is 0/0.
    success@eps     parsed and feasible and g <= eps, for eps in SUCCESS_EPS
J_floor = J_FLOOR_FRACTION (1%) x the median J* of the system's instances in the dataset (info.json stores
it per system, `j_floor` computes it): it keeps g finite for the rare instance with J* near 0 without
changing g where J* is typical. Unparsed rows get NaN for every number and False for every flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lib.control.answer import parse_controls
from lib.control.systems import FEASIBILITY_TOL, System, simulate, trajectory_cost

J_FLOOR_FRACTION = 0.01
SUCCESS_EPS = (0.01, 0.05, 0.10)


@dataclass(frozen=True)
class ControlMetrics:
    parsed: np.ndarray  # [B] bool
    feasible: np.ndarray  # [B] bool
    violation: np.ndarray  # [B] max control-bound violation (NaN when unparsed)
    J: np.ndarray  # [B]
    J_zero: np.ndarray  # [B] cost of u = 0
    gap: np.ndarray  # [B]
    terminal_error: np.ndarray  # [B]
    score: np.ndarray  # [B]
    success: dict[float, np.ndarray]  # eps -> [B] bool


def j_floor(J_opt: np.ndarray) -> float:
    """J_FLOOR_FRACTION x median(J*) over a system's instances."""
    return J_FLOOR_FRACTION * float(np.median(np.asarray(J_opt, dtype=float)))


def zero_control_cost(system: System, x0: np.ndarray) -> np.ndarray:
    """J0: the cost of doing nothing (u = 0) from each x0 [B, n]."""
    x0 = np.asarray(x0, dtype=float).reshape(-1, system.n)
    zeros = np.zeros((len(x0), system.steps))
    return trajectory_cost(system, simulate(system, x0, zeros), zeros)


def control_violation(system: System, u: np.ndarray) -> np.ndarray:
    """max_k max(u_k - u_max, u_min - u_k, 0) for u [B, N]; NaN controls count as infinitely violating."""
    u = np.asarray(u, dtype=float)
    over = np.maximum(u - system.u_max, system.u_min - u)
    return np.where(np.isnan(over), np.inf, np.maximum(over, 0.0)).max(axis=1)


def optimality_gap(J: np.ndarray, J_opt: np.ndarray, J_floor: float) -> np.ndarray:
    """g = (J - J*) / max(J*, J_floor)."""
    return (np.asarray(J) - J_opt) / np.maximum(J_opt, J_floor)


def normalised_score(J: np.ndarray, J_opt: np.ndarray, J_zero: np.ndarray, J_floor: float) -> np.ndarray:
    """S = 1 - (J - J*) / max(J0 - J*, J_floor): 1 at the optimum, 0 for u = 0 (module docstring)."""
    return 1.0 - (np.asarray(J) - J_opt) / np.maximum(np.asarray(J_zero) - J_opt, J_floor)


def success_at(parsed: np.ndarray, feasible: np.ndarray, gap: np.ndarray, eps: float) -> np.ndarray:
    """parsed and feasible and g <= eps (NaN gaps never succeed)."""
    with np.errstate(invalid="ignore"):
        return np.asarray(parsed) & np.asarray(feasible) & (np.asarray(gap) <= eps)


def evaluate_controls(
    system: System,
    x0: np.ndarray,
    u: np.ndarray,
    J_opt: np.ndarray,
    J_floor: float,
    parsed: np.ndarray | None = None,
    J_zero: np.ndarray | None = None,
) -> ControlMetrics:
    """Score controls u [B, N] from x0 [B, n] against the optima J_opt [B]; parsed [B] marks usable rows
    (default: rows whose N values are all finite). J_zero [B], the cost of u = 0 (a dataset record's
    `J_zero`), is simulated when not given."""
    x0 = np.asarray(x0, dtype=float).reshape(-1, system.n)
    u = np.asarray(u, dtype=float).reshape(len(x0), system.steps)
    J_opt = np.asarray(J_opt, dtype=float)
    if parsed is None:
        parsed = np.isfinite(u).all(axis=1)
    parsed = np.asarray(parsed, dtype=bool)
    usable = np.where(parsed[:, None], u, 0.0)  # unparsed rows are simulated as zeros, then masked out
    states = simulate(system, x0, usable)
    J = np.where(parsed, trajectory_cost(system, states, usable), np.nan)
    violation = np.where(parsed, control_violation(system, usable), np.nan)
    with np.errstate(invalid="ignore", over="ignore"):  # diverging answers give inf/nan, which is their score
        feasible = parsed & (violation <= FEASIBILITY_TOL)
        J_zero = zero_control_cost(system, x0) if J_zero is None else np.asarray(J_zero, dtype=float)
        gap = optimality_gap(J, J_opt, J_floor)
        terminal = np.where(parsed, np.linalg.norm(states[:, -1] - system.x_target, axis=1), np.nan)
        score = normalised_score(J, J_opt, J_zero, J_floor)
    return ControlMetrics(
        parsed=parsed,
        feasible=feasible,
        violation=violation,
        J=J,
        J_zero=J_zero,
        gap=gap,
        terminal_error=terminal,
        score=score,
        success={eps: success_at(parsed, feasible, gap, eps) for eps in SUCCESS_EPS},
    )


def evaluate_completions(
    system: System,
    x0: np.ndarray,
    completions: Sequence[str],
    J_opt: np.ndarray,
    J_floor: float,
    J_zero: np.ndarray | None = None,
) -> ControlMetrics:
    """Parse each completion's <CONTROLS> (strictly) and score it with evaluate_controls (J_zero as there)."""
    u = np.full((len(completions), system.steps), np.nan)
    parsed = np.zeros(len(completions), dtype=bool)
    for i, text in enumerate(completions):
        result = parse_controls(text, system.steps)
        if result.ok:
            u[i], parsed[i] = result.values, True
    return evaluate_controls(system, x0, u, J_opt, J_floor, parsed=parsed, J_zero=J_zero)
