"""Rounding exact optima onto the printed grid: the dataset labels (docs/ARCHITECTURE.md, "The control core").

Labels (`u_label`): the answer prints controls with `decimals` decimals, and plain rounding of u* to 2 decimals
costs up to ~8% (linear) and ~40% (pendulum) of J* on some instances (measured, 300 and 12 instances). Instead the controls are rounded one at a time,
each after correcting for the rounding errors already made (Babai's nearest-plane rounding in the metric
of the cost Hessian H, restricted to the free controls): with H_free = M' D M (M unit lower triangular),
J(u* + d) - J* ~ 1/2 sum_k D_k ((M d)_k)^2, so step k aims at u*_k - sum_{j<k} M_kj d_j and rounds that.
The label is whichever of this and plain rounding has the lower simulated cost J_label >= J*. Where that is
still more than LABEL_RTOL (0.5%) of J* above J* (x_0 near the target, J* ~ 1e-3: under 1% of the instances of
the default double-integrator boxes), a Schnorr-Euchner enumeration (`_search_grid`) looks for a cheaper grid
point: depth first in Babai's order, each control trying grid values by increasing distance from its
corrected aim, a branch cut as soon as its partial cost reaches the best found; at most SEARCH_NODES nodes.
With 10 controls it finished on all 228 default-box instances that needed it (the label is then the
cheapest printable answer with the other controls on their bounds); with 50 it rarely does and keeps the
best found.

What the labels promise: J_label - J* <= 1% of max(J*, J_floor) (lib/control/metrics.py; labels pass
success@1%), measured at most 0.70% (double_integrator_short) and 0.35% (double_integrator) over every
2-decimal state of the default box. Relative to J* alone no rounding can keep 1% near the target: for
x_0 = (0, -0.01) the cheapest 2-decimal answer of double_integrator_short costs 20% more than J*.

The optima and the cost Hessians come from lib/control/references.py; this module only rounds them.
"""

from __future__ import annotations

import numpy as np

from lib.control.systems import System, simulate, trajectory_cost

# labels: the grid search runs where plain / Babai rounding costs more than LABEL_RTOL * J* above J*, and
# visits at most SEARCH_NODES nodes per instance
LABEL_RTOL = 0.005
SEARCH_NODES = 5_000
# the promise (module docstring), which `--validate` checks on every record of a fixed system: from
# PROMISE_DECIMALS decimals on, J_label - J* <= LABEL_GAP_PROMISE x max(J*, J_floor); at fewer decimals the
# grid is too coarse for it (1 decimal: up to 6.7% measured on 60 double_integrator states), and for a family
# some members' cheapest printable answer costs more (a small R with a long dt makes J steep in u): there the
# promise is only that the label costs no more than plain rounding of u*
LABEL_GAP_PROMISE = 0.01
PROMISE_DECIMALS = 2


def grid_bounds(u_min: float, u_max: float, decimals: int) -> tuple[float, float]:
    """The bounds on the printed grid (k / 10^decimals): the widest grid values inside [u_min, u_max]."""
    q = 10.0**decimals
    return float(np.ceil(u_min * q - 1e-9) / q), float(np.floor(u_max * q + 1e-9) / q)


def round_plain(system: System, u: np.ndarray, decimals: int) -> np.ndarray:
    """Each control to the nearest grid value k / 10^decimals inside the bounds."""
    q = 10.0**decimals
    low, high = grid_bounds(system.u_min, system.u_max, decimals)
    # np.round gives the integer k exactly; k / q is then the double nearest to the decimal k / 10^d,
    # the same double float() returns for the printed text
    return np.clip(np.round(u * q) / q, low, high)


def _unit_lower_factor(H: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(M, D): M unit lower triangular, D [N] > 0, H = M' diag(D) M: a Cholesky of H with the order reversed."""
    L = np.linalg.cholesky(H[::-1, ::-1])  # H reversed = L L' = Lt diag(l^2) Lt', Lt = L with unit diagonal
    Lt = L / np.diag(L)
    # reversing back gives H = U D U' with U = M' unit upper triangular and D = l^2 reversed
    return Lt[::-1, ::-1].T, (np.diag(L) ** 2)[::-1].copy()


def _round_nearest_plane(system: System, u: np.ndarray, H: np.ndarray, free: np.ndarray, decimals: int):
    """Babai rounding (module docstring) of a group u [G, N] that shares H and the free mask [N]."""
    q = 10.0**decimals
    low, high = grid_bounds(system.u_min, system.u_max, decimals)
    out = round_plain(system, u, decimals)  # controls on their bounds are grid values already
    idx = np.flatnonzero(free)
    if idx.size == 0:
        return out
    try:
        M, _ = _unit_lower_factor(H[np.ix_(idx, idx)])
    except np.linalg.LinAlgError:  # Hessian not positive definite on the free controls: plain rounding
        return out
    made = np.zeros((len(u), idx.size))  # rounding errors made so far, d_j
    for j, k in enumerate(idx):
        aim = u[:, k] - made[:, :j] @ M[j, :j]
        out[:, k] = np.clip(np.round(aim * q) / q, low, high)
        made[:, j] = out[:, k] - u[:, k]
    return out


def _search_grid(
    system: System, u: np.ndarray, H: np.ndarray, free: np.ndarray, decimals: int, start: np.ndarray
) -> tuple[np.ndarray, bool]:
    """(v, exhausted): the grid point nearest u [N] in the metric of H over the free controls (others rounded).

    Schnorr-Euchner enumeration (module docstring): depth-first over the free controls in Babai's
    order, each level trying grid values by increasing distance from its corrected aim, a branch dropped
    as soon as its partial cost 1/2 sum_j D_j ((M d)_j)^2 reaches the best full one found. `start` (a grid
    point, e.g. the Babai rounding) is the first incumbent. `exhausted` is False when SEARCH_NODES ran out
    (v is then the best point found so far).
    """
    q = 10.0**decimals
    low, high = grid_bounds(system.u_min, system.u_max, decimals)
    k_low, k_high = round(low * q), round(high * q)
    idx = np.flatnonzero(free)
    v = start.copy()
    if idx.size == 0:
        return v, True
    try:
        M, D = _unit_lower_factor(H[np.ix_(idx, idx)])
    except np.linalg.LinAlgError:
        return v, False
    M, D, target, m = M.tolist(), (0.5 * D / (q * q)).tolist(), (u[idx] * q).tolist(), idx.size
    d = (start[idx] * q - u[idx] * q).tolist()  # the incumbent's errors, in grid units
    best = sum(D[j] * (d[j] + sum(M[j][i] * d[i] for i in range(j))) ** 2 for j in range(m))
    best_k = None
    k = [0] * m  # the grid value (integer) tried at each level
    aim, base, tries, partial = [0.0] * m, [0] * m, [0] * m, [0.0] * (m + 1)
    nodes, j = 0, 0
    aim[0], base[0] = target[0], min(max(round(target[0]), k_low), k_high)
    while j >= 0:
        # the next grid value at level j by increasing |value - aim|: base, base + s, base - s, base + 2s, ...
        # (base is the grid value nearest the aim; values past a bound are skipped)
        t = tries[j]
        tries[j] = t + 1
        r = (t + 1) // 2
        if base[j] + r > k_high and base[j] - r < k_low:
            j -= 1  # both sides past the bounds: this level is done
            continue
        s = 1 if aim[j] >= base[j] else -1
        value = base[j] + (r * s if t % 2 else -r * s)
        if value < k_low or value > k_high:
            continue
        cost = partial[j] + D[j] * (value - aim[j]) ** 2
        nodes += 1
        if nodes > SEARCH_NODES:
            break
        if cost >= best * (1.0 - 1e-12):
            j -= 1  # the values left at this level are farther from the aim: they cost more
            continue
        k[j], d[j] = value, value - target[j]
        if j + 1 == m:
            best, best_k = cost, list(k)
            j -= 1  # as above: its siblings cost more
            continue
        j += 1
        partial[j] = cost
        aim[j] = target[j] - sum(M[j][i] * d[i] for i in range(j))
        base[j], tries[j] = min(max(round(aim[j]), k_low), k_high), 0
    if best_k is not None:
        v[idx] = np.array(best_k, dtype=float) / q
    return v, nodes <= SEARCH_NODES


def round_for_label(
    system: System,
    x0: np.ndarray,
    u: np.ndarray,
    hessians: np.ndarray,
    decimals: int,
    J: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(u_label [B, N], J_label [B]): the better of plain and Babai rounding of the optima u [B, N], and for
    instances where that costs more than LABEL_RTOL * J* above J*, the grid search (`_search_grid`).

    hessians: [N, N] shared by the batch (a linear system), or [B, N, N] one per instance. J: the simulated
    cost of u [B] when the caller has it already (saves one simulation), else it is simulated here.
    """
    free = (u > system.u_min) & (u < system.u_max)
    babai = np.empty_like(u)
    if hessians.ndim == 2:  # linear: instances with the same active set share one factorisation
        patterns, group = np.unique(free, axis=0, return_inverse=True)
        for g, pattern in enumerate(patterns):
            rows = np.flatnonzero(group.ravel() == g)
            babai[rows] = _round_nearest_plane(system, u[rows], hessians, pattern, decimals)
    else:
        for i in range(len(u)):
            babai[i] = _round_nearest_plane(system, u[i : i + 1], hessians[i], free[i], decimals)[0]
    plain = round_plain(system, u, decimals)
    J_babai = trajectory_cost(system, simulate(system, x0, babai), babai)
    J_plain = trajectory_cost(system, simulate(system, x0, plain), plain)
    keep_babai = J_babai <= J_plain
    label, J_label = np.where(keep_babai[:, None], babai, plain), np.where(keep_babai, J_babai, J_plain)
    if J is None:
        J = trajectory_cost(system, simulate(system, x0, u), u)
    searched = False
    for i in np.flatnonzero(J_label - J > LABEL_RTOL * J):
        H = hessians if hessians.ndim == 2 else hessians[i]
        v, _ = _search_grid(system, u[i], H, free[i], decimals, label[i])
        J_v = trajectory_cost(system, simulate(system, x0[i : i + 1], v[None]), v[None])[0]
        if J_v < J_label[i]:  # the simulated cost decides (the quadratic model is exact only when linear)
            label[i], J_label[i] = v, J_v
            searched = True
    if searched:  # the batch's cost again: the same bits as simulating the whole batch of labels gives
        J_label = trajectory_cost(system, simulate(system, x0, label), label)
    return label, J_label
