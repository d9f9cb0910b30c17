"""The baselines of an evaluation and its verdict (docs/ARCHITECTURE.md, "Baselines"): each baseline of
lib/control/baselines.py answers the same problems as the models (open loop, or re-planning from every
visited state in MPC mode), scored by the same simulator into the same rows; then, per model, the paired
comparison with the best baseline over the same problems (the verdict), and with each baseline (the table
"Against each baseline").

The verdict's statistic, per problem i (the first answer of each):

    g_i = the gap (J - J*) / max(J*, J_floor) where the answer is feasible, +inf where it is not (unparsed
          or out of bounds), so a failure is the worst answer, never left out
    d_i = ln(max(g_model, GAP_FLOOR) / max(g_baseline, GAP_FLOOR))    (0 when both fail)

The best baseline has the smallest median g. The model beats it when the 95% bootstrap interval of the
median of d (problems resampled, pairs kept) lies below 0, loses when it lies above, and is not
distinguishable from it otherwise. GAP_FLOOR: gaps under 0.1% count as equal, the size of the printed
labels' own rounding (GAP_FLOOR and d live in lib/llm/evaluation.py, which compares every other pair the
same way). Success@10% is compared the same way (the paired difference of rates).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lib.control.baselines import ABOUT, BASELINES, FittedBaselines, problem_features, state_features
from lib.control.families import system_groups
from lib.llm.evaluation import (
    BOOTSTRAP_RESAMPLES,
    SampleRows,
    closed_loop,
    failures_infinite,
    log_gap_ratio,
    score_samples,
)

VERDICT_KEY = "success@10%"


def baseline_rows(
    records: list[dict],
    fitted: dict[str, FittedBaselines],
    name: str,
    mode: str = "control",
    replan_every: int = 10,
) -> SampleRows:
    """Baseline `name`'s answers (k = 1) to every record, scored like a model's; a record whose system the
    baseline was not fitted for is an unparsed row with the reason."""
    rows = SampleRows(k=1)
    for record in records:
        rows.system.append(record["system"])
        rows.record_id.append(record["id"])
        rows.completion.append("")
        rows.reason.append("")
        rows.u.append(np.full(record["horizon"]["steps"], np.nan))
    for system, model in fitted.items():
        idx = [i for i, r in enumerate(records) if r["system"] == system]
        if not idx:
            continue
        if name in model.missing:
            for i in idx:
                rows.reason[i] = f"baseline not fitted: {model.missing[name]}"
            continue
        group = [records[i] for i in idx]
        for problem, members in system_groups(group):  # a family member answered with its own problem
            members = members.tolist()
            first = group[members[0]]
            if mode == "mpc":
                decimals = int(first["decimals"])

                def plan(
                    states: np.ndarray, model=model, decimals=decimals, first=first, problem=problem
                ) -> tuple[np.ndarray, list[str], list[str]]:
                    shown = np.round(states, decimals)  # the state as a prompt would show it
                    features = state_features(shown, first)
                    return model.predict(name, features, problem), [""] * len(states), [""] * len(states)

                x0 = np.array([group[j]["x0"] for j in members], dtype=float)
                u = closed_loop(problem, x0, plan, replan_every)[0]
            else:
                u = model.predict(name, problem_features([group[j] for j in members]), problem)
            for row, j in enumerate(members):
                rows.u[idx[j]] = u[row]
    return score_samples(records, rows)


def problem_gaps(rows: SampleRows) -> np.ndarray:
    """[records] the first answer's gap where feasible, +inf where not (the module docstring's g)."""
    first = np.arange(0, len(rows), rows.k)
    return failures_infinite(rows.metrics["gap"][first], rows.metrics["feasible"][first])


def _finite(value: float) -> float | None:
    """JSON has no infinity: a median over mostly failed answers is written as null (the report: failed)."""
    return float(value) if np.isfinite(value) else None


def _interval(draws: np.ndarray) -> list[float | None]:
    # order statistics, not interpolation: draws may hold +-inf (failures), and inf - inf is no number
    low = np.percentile(draws, 2.5, method="lower")
    high = np.percentile(draws, 97.5, method="higher")
    return [_finite(low), _finite(high)]


def versus(model: SampleRows, baseline: SampleRows, seed: int = 0) -> dict:
    """The paired comparison of a model with one baseline over the same problems (module docstring)."""
    g_model, g_base = problem_gaps(model), problem_gaps(baseline)
    d = log_gap_ratio(g_model, g_base)
    first = np.arange(0, len(model), model.k)
    s_model = model.metrics[VERDICT_KEY][first].astype(float)
    s_base = baseline.metrics[VERDICT_KEY].astype(float)
    rows = np.random.default_rng(seed).integers(0, len(d), size=(BOOTSTRAP_RESAMPLES, len(d)))
    median_d = float(np.median(d))
    medians = np.median(d[rows], axis=1)
    low_draw = np.percentile(medians, 2.5, method="lower")
    high_draw = np.percentile(medians, 97.5, method="higher")
    if high_draw < 0:  # infinite bounds count: a model failing on most problems is beaten
        beats = "yes"
    elif low_draw > 0:
        beats = "no"
    else:
        beats = "not distinguishable"
    return {
        "problems": int(len(d)),
        "median_gap": _finite(np.median(g_model)),
        "baseline_median_gap": _finite(np.median(g_base)),
        "median_log_gap_ratio": _finite(median_d),
        "median_log_gap_ratio_ci": [_finite(low_draw), _finite(high_draw)],
        VERDICT_KEY: float(s_model.mean()),
        f"baseline_{VERDICT_KEY}": float(s_base.mean()),
        f"{VERDICT_KEY}_difference": float(s_model.mean() - s_base.mean()),
        f"{VERDICT_KEY}_difference_ci": _interval((s_model[rows] - s_base[rows]).mean(axis=1)),
        "model_better_share": float(np.mean(d < 0)),  # two failures, or both under GAP_FLOOR: a tie
        "beats": beats,
    }


def best_baseline(rows: dict[str, SampleRows]) -> str | None:
    """The baseline with the smallest median per-problem gap (failures +inf); None without baselines."""
    medians = {name: float(np.median(problem_gaps(r))) for name, r in rows.items()}
    return min(medians, key=lambda name: (medians[name], BASELINES.index(name))) if medians else None


def versus_each_baseline(
    models: dict[str, SampleRows], baselines: dict[str, SampleRows], seed: int = 0
) -> dict:
    """{model label: {baseline name: versus(model, that baseline)}}: the verdict's statistic against every
    baseline, not only the best (a family's target names nearest and affine too); {} without baselines."""
    return {
        label: {name: versus(rows, base, seed) for name, base in baselines.items()}
        for label, rows in models.items()
    }


def verdicts(vs_each: dict, baselines: dict[str, SampleRows]) -> dict:
    """{model label: its entry against the best baseline, plus that baseline's name}, read from
    versus_each_baseline's result (so the best baseline's bootstrap is not run twice); {} without baselines."""
    best = best_baseline(baselines)
    if best is None:
        return {}
    return {label: {"best_baseline": best, **each[best]} for label, each in vs_each.items()}


def coverage(info: dict, records: Sequence[dict], fitted: dict[str, FittedBaselines]) -> dict:
    """Per system: how much of the problem space training covered (info.json's count of distinct problems
    and train fraction, from the dataset's info.json as loaded) and how far the evaluated problems lie from the nearest training problem, in the
    standardized units of `nearest` (median and max)."""
    out = {}
    for system, model in fitted.items():
        group = [r for r in records if r["system"] == system]
        if not group or not len(model.train_x):
            continue
        distances = model.nearest_distances(problem_features(group))
        entry = dict(info["systems"][system].get("coverage", {}))
        entry |= {"train_records": int(len(model.train_x)), "nearest_train_distance": {
            "median": float(np.median(distances)), "max": float(np.max(distances))}}  # fmt: skip
        out[system] = entry
    return out


def baselines_about(fitted: dict[str, FittedBaselines]) -> dict:
    """What each baseline is, its k or fitting time per system, and why one is missing (metrics.json)."""
    about = {}
    for name in BASELINES:
        entry: dict = {
            "what": ABOUT[name],
            "rounding": "clipped to the bounds, rounded to the label's decimals",
        }
        for system, model in fitted.items():
            if name in model.missing:
                entry.setdefault("missing", {})[system] = model.missing[name]
                continue
            detail = {"fit_seconds": round(model.fit_seconds.get(name, 0.0), 3)}
            if name == "knn":
                detail["k"] = model.k
            entry.setdefault("systems", {})[system] = detail
        about[name] = entry
    return about
