"""Evaluation by simulation (docs/ARCHITECTURE.md, "Metrics"): score what a model writes against the certified optimum.

An *answerer* is any function `prompts -> completions` (a model's batched generation, or in tests a double
that returns the labels). `answer_records` asks it for `k` samples per eval record, either once per record
(control mode: the open-loop plan is simulated) or in a closed loop (MPC mode: the plan is re-made from the
simulated state every `replan_every` steps and only its first steps are applied). `score_samples` scores
every sample with lib.control.metrics (no clipping, no padding: an answer that does not parse is a failure with its
parser's reason), and `summarize` turns the rows into the numbers a paper reports:

    rates over ALL samples       parsed, feasible, success@1/5/10% (and pass@k over prompts when k > 1)
    values over parsed samples   score S (1 = optimal, 0 = doing nothing), terminal error ||x_N - x*||
    values over feasible samples optimality gap g (an infeasible answer may cost less than J*: its gap
                                 says nothing about optimality)
each with its mean and median and a percentile-bootstrap 95% interval (`bootstrap_ci`, seeded), per system
and over all systems. The same table is computed for two reference controllers from the records
themselves: the exact optimum (`u_opt`, gap 0 by construction) and u = 0 (score 0 by construction), plus the
printed label the model is trained to copy (`label`), whose gap is the rounding of the controls.

Two answers to the same problem are compared by the log-ratio of their gaps (`log_gap_ratio`): a failure
(unparsed or infeasible) counts as an infinite gap, and gaps under GAP_FLOOR count as equal. It ranks a
model against a baseline (lib/llm/verdict.py), a second stage against the first and best-of-k against greedy
(`paired_log_ratio`); `best_of_rows` keeps each problem's best of its first k samples.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lib.common.errors import UsageError
from lib.control.answer import build_prompt, format_checks, parse_controls
from lib.control.families import system_groups
from lib.control.metrics import SUCCESS_EPS, evaluate_controls
from lib.control.systems import simulate

Answerer = Callable[[list[list[dict]]], list[str]]
BOOTSTRAP_RESAMPLES = 2000
REFERENCES = (
    "optimal",
    "label",
    "zero",
)  # reference controllers computed from the records (module docstring)
# Gaps under 0.1% count as equal when two answers are compared: the size of the printed labels' own rounding.
GAP_FLOOR = 1e-3


@dataclass
class SampleRows:
    """One entry per sample (record-major: record i's samples are rows i*k .. i*k+k-1)."""

    k: int
    system: list[str] = field(default_factory=list)
    record_id: list[str] = field(default_factory=list)
    completion: list[str] = field(default_factory=list)  # the (first) answer text; MPC: the first plan
    reason: list[str] = field(default_factory=list)  # "" when parsed
    u: list[np.ndarray] = field(default_factory=list)  # [N] controls applied (NaN when unparsed)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)  # name -> [samples]

    def __len__(self) -> int:
        return len(self.system)


# ---------------------------------------------------------------- answering


def _fill_controls(texts: Sequence[str], steps: int) -> tuple[np.ndarray, list[str]]:
    """Parse each text strictly: controls [len, steps] (NaN rows for failures) and the reasons ("" if ok)."""
    u = np.full((len(texts), steps), np.nan)
    reasons = []
    for i, text in enumerate(texts):
        parsed = parse_controls(text, steps)
        if parsed.ok:
            u[i] = parsed.values
        reasons.append(parsed.reason)
    return u, reasons


def answer_records(
    records: list[dict], answer: Answerer, k: int = 1, mode: str = "control", replan_every: int = 10
) -> SampleRows:
    """Ask `answer` for k samples per record and simulate them: open loop (mode "control") or in MPC."""
    rows = SampleRows(k=k)
    per_row_system = [r["system"] for r in records for _ in range(k)]
    rows.system = per_row_system
    rows.record_id = [r["id"] for r in records for _ in range(k)]
    rows.completion = [""] * len(per_row_system)
    rows.reason = [""] * len(per_row_system)
    rows.u = [np.empty(0)] * len(per_row_system)
    if mode == "control":
        prompts = [r["prompt"] for r in records for _ in range(k)]
        texts = _call(answer, prompts)
        for system, idx in system_groups(records, k):  # each row parsed with its own problem's horizon
            u, reasons = _fill_controls([texts[i] for i in idx], system.steps)
            for j, i in enumerate(idx):
                rows.completion[i], rows.reason[i], rows.u[i] = texts[i], reasons[j], u[j]
    elif mode == "mpc":
        for system, idx in system_groups(records, k):
            x0 = np.array([records[i // k]["x0"] for i in idx], dtype=float)
            first_record = records[idx[0] // k]
            style = first_record.get("prompt_style", "full")
            u, reasons, first = closed_loop(
                system, x0, text_planner(system, answer, first_record["decimals"], style), replan_every
            )
            for j, i in enumerate(idx):
                rows.completion[i], rows.reason[i], rows.u[i] = first[j], reasons[j], u[j]
    else:
        raise UsageError(f"unknown evaluation mode '{mode}'.", fix="use control or mpc.")
    return rows


def _call(answer: Answerer, prompts: list[list[dict]]) -> list[str]:
    texts = answer(prompts)
    if len(texts) != len(prompts):
        raise RuntimeError(f"the answerer returned {len(texts)} completions for {len(prompts)} prompts")
    return list(texts)


Planner = Callable[[np.ndarray], tuple[np.ndarray, list[str], list[str]]]


def text_planner(system, answer: Answerer, decimals: int, prompt_style: str = "full") -> Planner:
    """A model as an MPC planner: states -> (plans [B, N], parser reasons, texts). It is asked the full N-step
    problem from each state, shown rounded to `decimals` in `prompt_style`, as in the prompts it trained on."""

    def plan(states: np.ndarray) -> tuple[np.ndarray, list[str], list[str]]:
        texts = _call(answer, [build_prompt(system, x, decimals, prompt_style) for x in states])
        plans, reasons = _fill_controls(texts, system.steps)
        return plans, reasons, texts

    return plan


def closed_loop(
    system, x0: np.ndarray, plan: Planner, replan_every: int
) -> tuple[np.ndarray, list[str], list[str]]:
    """Model-predictive control: every `replan_every` steps `plan` makes the full N-step plan from the
    simulated states and the first `replan_every` controls of each plan are applied. All instances re-plan
    in one batched call.

    Returns the applied controls [B, N] (NaN rows for loops that broke), the reasons ("" when every plan
    parsed; else which re-plan failed and why) and the first plan's text of each loop.
    """
    N = system.steps
    x = np.asarray(x0, dtype=float).copy()
    applied = np.full((len(x), N), np.nan)
    reasons = [""] * len(x)
    first = [""] * len(x)
    alive = np.ones(len(x), dtype=bool)
    for start in range(0, N, replan_every):
        live = np.flatnonzero(alive)
        if live.size == 0:
            break
        plans, plan_reasons, texts = plan(x[live])
        stop = min(start + replan_every, N)
        for j, i in enumerate(live):
            if start == 0:
                first[i] = texts[j]
            if plan_reasons[j]:
                alive[i] = False
                reasons[i] = f"re-plan at step {start}: {plan_reasons[j]}"
                applied[i] = np.nan
        ok = [j for j, i in enumerate(live) if alive[i]]
        if not ok:
            continue
        rows = live[ok]
        chunk = plans[ok, : stop - start]
        applied[rows, start:stop] = chunk
        x[rows] = simulate(system, x[rows], chunk)[:, -1]
    return applied, reasons, first


# ---------------------------------------------------------------- scoring


def best_of_rows(rows: SampleRows, k: int) -> SampleRows:
    """Per record, the best of its first k samples as the simulator ranks them, as rows with k = 1 in the same
    record order: feasible before parsed-but-infeasible before unparsed; then the lowest cost J among feasible
    samples and the lowest violation among infeasible ones; the earliest sample on ties. The first k, not any
    k: best-of-8 then holds best-of-4's choice among its candidates, so it is never ranked worse."""
    if not 1 <= k <= rows.k:
        raise ValueError(f"best of {k} needs 1 <= k <= {rows.k} samples per record")
    m = rows.metrics
    records = len(rows) // rows.k
    tier = np.where(m["feasible"], 0, np.where(m["parsed"], 1, 2))
    # J of a diverging feasible answer is inf: ranked last among the feasible, never NaN-compared
    value = np.where(m["feasible"], m["J"], np.where(m["parsed"], m["violation"], 0.0))
    value = np.nan_to_num(value, nan=np.inf)
    first_k = (tier.reshape(records, rows.k)[:, :k], value.reshape(records, rows.k)[:, :k])
    # lexsort: the last key is the primary one, and the sort is stable (the earliest sample wins ties)
    chosen = np.arange(records) * rows.k + np.lexsort((first_k[1], first_k[0]), axis=-1)[:, 0]
    return SampleRows(
        k=1,
        system=[rows.system[i] for i in chosen],
        record_id=[rows.record_id[i] for i in chosen],
        completion=[rows.completion[i] for i in chosen],
        reason=[rows.reason[i] for i in chosen],
        u=[rows.u[i] for i in chosen],
        metrics={name: values[chosen] for name, values in rows.metrics.items()},
    )


def score_samples(records: list[dict], rows: SampleRows) -> SampleRows:
    """Fill rows.metrics: every number of lib.control.metrics per sample (NaN / False where unparsed)."""
    k = rows.k
    n = len(rows)
    out = {
        name: np.full(n, np.nan)
        for name in ("violation", "J", "J_opt", "J_zero", "gap", "score", "terminal_error")
    }
    out["parsed"] = np.zeros(n, dtype=bool)
    out["feasible"] = np.zeros(n, dtype=bool)
    for eps in SUCCESS_EPS:
        out[success_key(eps)] = np.zeros(n, dtype=bool)
    for system, idx in system_groups(records, k):  # each row scored with its own problem
        group = [records[i // k] for i in idx]
        x0 = np.array([r["x0"] for r in group], dtype=float)
        J_opt = np.array([r["J_opt"] for r in group], dtype=float)
        u = np.stack([rows.u[i] for i in idx])
        parsed = np.array([rows.reason[i] == "" for i in idx])
        m = evaluate_controls(system, x0, u, J_opt, float(group[0]["J_floor"]), parsed=parsed)
        out["parsed"][idx], out["feasible"][idx] = m.parsed, m.feasible
        out["J_opt"][idx] = J_opt
        for key in ("violation", "J", "J_zero", "gap", "score", "terminal_error"):
            out[key][idx] = getattr(m, key)
        for eps in SUCCESS_EPS:
            out[success_key(eps)][idx] = m.success[eps]
    rows.metrics = out
    return rows


def success_key(eps: float) -> str:
    return f"success@{round(eps * 100)}%"


def reference_rows(records: list[dict], which: str) -> SampleRows:
    """A reference controller's samples (k = 1): the exact optimum, the printed label, or u = 0."""
    rows = SampleRows(k=1)
    for record in records:
        steps = record["horizon"]["steps"]
        if which == "optimal":
            u, reason = np.asarray(record["u_opt"], dtype=float), ""
        elif which == "zero":
            u, reason = np.zeros(steps), ""
        elif which == "label":
            parsed = parse_controls(record["completion"][-1]["content"], steps)
            u, reason = (parsed.values, "") if parsed.ok else (np.full(steps, np.nan), parsed.reason)
        else:
            raise ValueError(f"unknown reference '{which}'")
        rows.system.append(record["system"])
        rows.record_id.append(record["id"])
        rows.completion.append("")
        rows.reason.append(reason)
        rows.u.append(u)
    return score_samples(records, rows)


def gap_by_step(records: list[dict], rows: SampleRows) -> dict:
    """Where a controller's gap comes from, step by step, per system (as record["system"] names it): over its
    feasible answers, the median |u_k - u*_k| against the exact optimum, and the median gap when u_k alone is
    replaced by the optimum's u*_k (every other control as answered). A step whose exact value takes most of
    the gap away is where the answers are imprecise; the steps' gaps need not add up to the answer's, since
    the cost is quadratic in the controls. Family members of different horizons pool by step index. A median
    that is infinite (answers that diverge) is None, as in metrics.json."""
    k = rows.k
    pooled: dict[str, dict[str, list]] = {}  # system -> per answer: errors, gaps with one step exact, gap
    for system, idx in system_groups(records, k):
        idx = np.array([i for i in idx if rows.metrics["feasible"][i]], dtype=int)
        if not idx.size:
            continue
        group = [records[i // k] for i in idx]
        u = np.stack([rows.u[i] for i in idx])  # [B, N]
        u_opt = np.array([r["u_opt"] for r in group], dtype=float)
        batch, steps = u.shape
        # row b * N + j: answer b with its control j replaced by the optimum's, simulated in one call
        swapped = np.repeat(u, steps, axis=0).reshape(batch, steps, steps)
        swapped[:, np.arange(steps), np.arange(steps)] = u_opt
        m = evaluate_controls(
            system,
            np.repeat(np.array([r["x0"] for r in group], dtype=float), steps, axis=0),
            swapped.reshape(batch * steps, steps),
            np.repeat(np.array([r["J_opt"] for r in group], dtype=float), steps),
            float(group[0]["J_floor"]),
        )
        pool = pooled.setdefault(group[0]["system"], {"errors": [], "fixed": [], "gaps": []})
        pool["errors"].extend(np.abs(u - u_opt))
        # a swap whose states overflow gives a NaN cost: it diverged, so count it infinite (NaN is padding below)
        pool["fixed"].extend(np.nan_to_num(m.gap, nan=np.inf).reshape(batch, steps))
        pool["gaps"].extend(rows.metrics["gap"][idx])
    out = {}
    for name, pool in pooled.items():
        err, gap_fixed = _padded(pool["errors"]), _padded(pool["fixed"])
        longest = err.shape[1]
        out[name] = {
            "answers": len(pool["errors"]),
            "median_gap": _finite_or_none(float(np.median(pool["gaps"]))),
            "steps": [  # every step j < longest has an answer: nanmedian never sees an all-NaN column
                {"step": j, "answers": int(np.isfinite(err[:, j]).sum()),
                 "median_abs_error": float(np.nanmedian(err[:, j])),
                 "median_gap_step_exact": _finite_or_none(float(np.nanmedian(gap_fixed[:, j])))}
                for j in range(longest)
            ],
        }  # fmt: skip
    return out


def _padded(arrays: list[np.ndarray]) -> np.ndarray:
    """Rows of different lengths as one array, NaN past each row's end."""
    width = max(len(a) for a in arrays)
    return np.array([np.pad(a.astype(float), (0, width - len(a)), constant_values=np.nan) for a in arrays])


# ---------------------------------------------------------------- statistics


def bootstrap_ci(
    values: np.ndarray, statistic: str = "mean", resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap 95% interval of the mean or median of `values` (NaN, NaN when empty).

    Seeded, so the same values and seed give the same interval.
    """
    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, values.size, size=(resamples, values.size))]
    with np.errstate(invalid="ignore"):
        stats = np.median(draws, axis=1) if statistic == "median" else draws.mean(axis=1)
    low, high = np.percentile(stats, [2.5, 97.5])
    return float(low), float(high)


def paired_difference(before: np.ndarray, after: np.ndarray, seed: int = 0) -> dict:
    """after - before on the same problems (the problems where both are finite), with percentile-bootstrap
    95% intervals that resample problems, so each problem keeps its pair: the mean and the median of the
    differences, and the relative change of the median, median(after) / median(before) - 1."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    both = np.isfinite(before) & np.isfinite(after)
    before, after = before[both], after[both]
    n = int(both.sum())
    if n == 0:
        return {"n": 0, "mean_diff": None, "mean_diff_ci": [None, None], "median_diff": None,
                "median_diff_ci": [None, None], "median_change": None, "median_change_ci": [None, None]}  # fmt: skip
    rows = np.random.default_rng(seed).integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    diff = after - before
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.median(after[rows], axis=1) / np.median(before[rows], axis=1) - 1.0
        point_change = float(np.median(after) / np.median(before) - 1.0)

    def ci(draws: np.ndarray) -> list:
        draws = draws[np.isfinite(draws)]
        return (
            [_finite_or_none(float(v)) for v in np.percentile(draws, [2.5, 97.5])]
            if draws.size
            else [None, None]
        )

    return {
        "n": n,
        "mean_diff": float(diff.mean()),
        "mean_diff_ci": ci(diff[rows].mean(axis=1)),
        "median_diff": float(np.median(diff)),
        "median_diff_ci": ci(np.median(diff[rows], axis=1)),
        "median_change": _finite_or_none(point_change),
        "median_change_ci": ci(change),
    }


def failures_infinite(gap: np.ndarray, feasible: np.ndarray) -> np.ndarray:
    """Per answer the gap where it is feasible, +inf where not (unparsed or out of bounds): the gap that
    `log_gap_ratio` compares, a failure being the worst answer and never left out."""
    gap = np.asarray(gap, dtype=float)
    return np.where(np.asarray(feasible, dtype=bool) & np.isfinite(gap), gap, np.inf)


def log_gap_ratio(model: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per problem ln(max(g_model, GAP_FLOOR) / max(g_baseline, GAP_FLOOR)) of gaps from `failures_infinite`:
    +inf where only the model fails, -inf where only the baseline fails, 0 where both do."""
    m, b = np.maximum(model, GAP_FLOOR), np.maximum(baseline, GAP_FLOOR)
    with np.errstate(invalid="ignore"):
        d = np.log(m) - np.log(b)
    return np.where(np.isinf(m) & np.isinf(b), 0.0, d)


def paired_log_ratio(before: np.ndarray, after: np.ndarray, seed: int = 0) -> dict:
    """How `after` changes the gap of `before` on the same problems (per-problem gaps, failures +inf as
    `failures_infinite` gives them), d_i = log_gap_ratio(after_i, before_i):

    - mean_log_ratio: the mean of d over the problems where both answers are feasible, with a percentile-
      bootstrap 95% interval (those problems resampled, pairs kept); typical_ratio = exp(mean), the factor a
      typical gap is multiplied by (0.9: 10% smaller). A failure has no finite ratio, so it is counted apart:
    - only_after_failed / only_before_failed / both_failed: the problems where one or both answers failed;
    - after_better: the share of ALL problems where after has the lower floored gap (a feasible answer beats
      a failure, two failures tie), and median_log_ratio over all problems (failures as +-inf, as in the
      verdict), each with its bootstrap interval over all problems (the median's from order statistics:
      its draws may be infinite)."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    d = log_gap_ratio(after, before)
    n, finite = int(d.size), np.isfinite(before) & np.isfinite(after)  # not d's: both failing gives d = 0
    out: dict = {
        "problems": n,
        "both_feasible": int(finite.sum()),
        "only_after_failed": int(np.sum(np.isinf(after) & np.isfinite(before))),
        "only_before_failed": int(np.sum(np.isinf(before) & np.isfinite(after))),
        "both_failed": int(np.sum(np.isinf(after) & np.isinf(before))),
        "mean_log_ratio": None, "mean_log_ratio_ci": [None, None],
        "typical_ratio": None, "typical_ratio_ci": [None, None],
        "after_better": None, "after_better_ci": [None, None],
        "median_log_ratio": None, "median_log_ratio_ci": [None, None],
    }  # fmt: skip
    if n == 0:
        return out
    rng = np.random.default_rng(seed)
    kept = d[finite]
    if kept.size:
        means = kept[rng.integers(0, kept.size, size=(BOOTSTRAP_RESAMPLES, kept.size))].mean(axis=1)
        low, high = (float(v) for v in np.percentile(means, [2.5, 97.5]))
        out["mean_log_ratio"], out["mean_log_ratio_ci"] = float(kept.mean()), [low, high]
        out["typical_ratio"] = math.exp(out["mean_log_ratio"])
        out["typical_ratio_ci"] = [math.exp(low), math.exp(high)]
    rows = rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))
    better = (d < 0).astype(float)
    out["after_better"] = float(better.mean())
    out["after_better_ci"] = [float(v) for v in np.percentile(better[rows].mean(axis=1), [2.5, 97.5])]
    with np.errstate(invalid="ignore"):  # a middle pair of -inf and +inf has no median: null
        medians = np.median(d[rows], axis=1)
        out["median_log_ratio"] = _finite_or_none(float(np.median(d)))
    out["median_log_ratio_ci"] = [
        _finite_or_none(float(np.percentile(medians, 2.5, method="lower"))),
        _finite_or_none(float(np.percentile(medians, 97.5, method="higher"))),
    ]
    return out


def describe(values: np.ndarray, seed: int = 0) -> dict:
    """n, mean, median, and their bootstrap 95% intervals (infinite values kept: a diverging answer's cost
    is infinite, and hiding it would flatter the model)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return {"n": 0, "mean": None, "median": None, "mean_ci": [None, None], "median_ci": [None, None]}
    with np.errstate(invalid="ignore", over="ignore"):
        mean = float(values.mean())
    return {
        "n": int(values.size),
        "mean": _finite_or_none(mean),
        "median": _finite_or_none(float(np.median(values))),
        "mean_ci": [_finite_or_none(v) for v in bootstrap_ci(values, "mean", seed=seed)],
        "median_ci": [_finite_or_none(v) for v in bootstrap_ci(values, "median", seed=seed)],
    }


def _finite_or_none(value: float) -> float | None:
    """JSON has no inf/NaN: infinite means are written as null with the count of infinite values beside."""
    return value if math.isfinite(value) else None


def rate(flags: np.ndarray, seed: int = 0) -> dict:
    """A rate over samples with its bootstrap 95% interval."""
    flags = np.asarray(flags, dtype=float)
    low, high = bootstrap_ci(flags, "mean", seed=seed)
    return {"n": int(flags.size), "rate": float(flags.mean()) if flags.size else None, "ci": [low, high]}


def pass_at_k(flags: np.ndarray, k: int) -> np.ndarray:
    """Per prompt: did any of its k samples succeed (flags record-major, k per prompt)."""
    return np.asarray(flags, dtype=bool).reshape(-1, k).any(axis=1)


def failure_reasons(reasons: Sequence[str]) -> dict[str, int]:
    """Parse failures counted by kind: the reason up to its first colon ('wrong count', 'missing tag ...'),
    numbers replaced by N ('tag <CONTROLS> appears N times, expected once')."""
    kinds = Counter(re.sub(r"\d+", "N", r.split(":", 1)[0]) for r in reasons if r)
    return dict(kinds.most_common())


def summarize(rows: SampleRows, seed: int = 0) -> dict:
    """The report for a set of samples: 'all' and one entry per system (module docstring)."""
    groups = {"all": np.arange(len(rows))}
    for name in dict.fromkeys(rows.system):
        groups[name] = np.array([i for i, s in enumerate(rows.system) if s == name])
    return {name: _summary(rows, idx, seed) for name, idx in groups.items()}


def _summary(rows: SampleRows, idx: np.ndarray, seed: int) -> dict:
    m = {key: value[idx] for key, value in rows.metrics.items()}
    parsed, feasible = m["parsed"], m["feasible"]
    out = {
        "samples": int(idx.size),
        "prompts": int(idx.size // rows.k),
        "parsed": rate(parsed, seed),
        "feasible": rate(feasible, seed),
        **{success_key(eps): rate(m[success_key(eps)], seed) for eps in SUCCESS_EPS},
        "gap_feasible": describe(m["gap"][feasible], seed),
        "score_parsed": describe(m["score"][parsed], seed),
        "terminal_error_parsed": describe(m["terminal_error"][parsed], seed),
        "infinite_cost": int(np.isinf(m["J"][parsed]).sum()),
        "parse_failures": failure_reasons([rows.reason[i] for i in idx]),
    }
    if rows.k > 1:
        # idx is record-major and whole records, so reshaping by k groups each prompt's samples
        for eps in SUCCESS_EPS:
            out[f"pass@{rows.k} {success_key(eps)}"] = rate(pass_at_k(m[success_key(eps)], rows.k), seed)
    return out


# ---------------------------------------------------------------- format checks


def format_rates(
    texts: Sequence[str], records: Sequence[dict], k: int = 1
) -> tuple[dict[str, float], list[dict]]:
    """Rate of each format check over the answers (k per record, row i answering record i // k), and each
    answer's checks, against its own problem's horizon and bounds (what verify_grpo_format and main_eval
    --eval-mode format report)."""
    checks: list[dict] = [{}] * len(texts)
    for system, idx in system_groups(records, k):
        for i in idx:
            checks[i] = format_checks(texts[i], system)
    names = list(checks[0]) if checks else []
    rates = {name: sum(c[name] for c in checks) / len(checks) for name in names}
    return rates, checks
