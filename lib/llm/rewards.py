"""GRPO reward functions: plain functions of (prompts, completions, **columns) -> list[float].

TRL's GRPOTrainer calls each function with the batch's completions and every other dataset column as a
keyword argument, one entry per completion (a prompt's columns repeat for each of its generations), so
each completion is scored against its own instance: `system`, `x0`, `J_opt`, `J_floor` (and `J_zero`).
Every reward is bounded in [0, 1] and finite for any text (tests fuzz them); the score itself comes from
lib/control/metrics.py, i.e. the same simulator, parser and gap as evaluation.

Each answer is parsed and simulated once per batch, not once per reward: TRL calls the functions one after
the other with the same batch, so `score_batch` keeps the last BATCH_CACHE_SIZE batches' results (the
parse flags and a row-aligned ControlMetrics) under a key made of the batch's whole content (completion
texts, system, x0, J_opt, J_floor, J_zero), and the second, third and fourth function of a step reuse the
first one's work. Keys are compared by value, never by id, so a cached result is returned only for equal
inputs, where it is what a fresh computation gives. J_zero comes from the dataset column when TRL passes it
(lib/llm/grpo.py does) and is simulated otherwise. Each function keeps its own name (TRL's logs).

A config lists rewards by name with weights (`grpo.rewards`); REWARDS maps those names to functions, and
`reward_functions` binds the shaping scales from the config (grpo.optimality_sigma, grpo.terminal_scale,
grpo.log_gap_decades).
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import threading
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lib.control.answer import TAGS, parse_controls, too_long
from lib.control.families import record_system, system_groups
from lib.control.metrics import SUCCESS_EPS, ControlMetrics, evaluate_controls
from lib.llm.evaluation import GAP_FLOOR

VIOLATION_SCALE = 0.1  # a control 0.1 beyond its bound earns 1/e of the feasibility reward
BATCH_CACHE_SIZE = 2  # batches kept by score_batch: the current step's and the one before


def completion_text(completion: object) -> str:
    """The assistant text of a completion: a plain string, or TRL's conversational [{"role", "content"}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else ""
    return ""


def tags_in_order(text: str) -> bool:
    """The four tags are each there, in order (what earns the format reward's 0.25), in an answer of a
    possible length (lib/control/answer.py, MAX_ANSWER_CHARS)."""
    if too_long(text):
        return False
    positions = [text.find(tag) for tag in TAGS]
    return all(p >= 0 for p in positions) and positions == sorted(positions)


@dataclass(frozen=True)
class BatchScores:
    """What the rewards read about one batch, row-aligned with its completions (all systems together)."""

    tags_in_order: np.ndarray  # [B] bool
    metrics: ControlMetrics  # [B] rows; metrics.parsed[i] is parse_controls(text_i, N).ok


_batch_cache: deque[tuple[tuple, BatchScores]] = deque(maxlen=BATCH_CACHE_SIZE)
_batch_lock = threading.Lock()


def clear_batch_cache() -> None:
    """Forget every cached batch (benchmarks and tests)."""
    with _batch_lock:
        _batch_cache.clear()


def _batch_key(texts, system, x0, J_opt, J_floor, J_zero, params=None) -> tuple:
    """Everything a batch's scores depend on, as a value: tuples of strings and numbers, compared with ==
    (a NaN never equals a fresh NaN, which only costs a recomputation)."""
    return (
        tuple(texts),
        tuple(system),
        tuple(tuple(row) for row in x0),
        tuple(J_opt),
        tuple(J_floor),
        None if J_zero is None else tuple(J_zero),
        None if params is None else tuple(params),
    )


def _merge(count: int, parts: list[tuple[list[int], ControlMetrics]]) -> ControlMetrics:
    """One row-aligned ControlMetrics from the per-system groups (rows: each group's batch indices)."""
    if len(parts) == 1:  # one system: its rows are the whole batch, in order
        return parts[0][1]
    if not parts:  # an empty batch
        empty, no = np.empty(0), np.zeros(0, dtype=bool)
        floats = dict.fromkeys(("violation", "J", "J_zero", "gap", "terminal_error", "score"), empty)
        return ControlMetrics(parsed=no, feasible=no, **floats, success=dict.fromkeys(SUCCESS_EPS, no))
    merged = {}
    for field in ("parsed", "feasible", "violation", "J", "J_zero", "gap", "terminal_error", "score"):
        out = np.empty(count, dtype=getattr(parts[0][1], field).dtype)
        for rows, metrics in parts:
            out[rows] = getattr(metrics, field)
        merged[field] = out
    success = {}
    for eps in parts[0][1].success:
        out = np.zeros(count, dtype=bool)
        for rows, metrics in parts:
            out[rows] = metrics.success[eps]
        success[eps] = out
    return ControlMetrics(**merged, success=success)


def _compute_batch(texts, system, x0, J_opt, J_floor, J_zero, params=None) -> BatchScores:
    """Parse every completion once; simulate each problem's rows in one vectorised call (a fixed system's
    rows together, a family member's with its own system: the `params` column), in first-seen order, with
    J_floor of the group's first row."""
    rows_of = [{"system": name, "params": problem_params(params, i)} for i, name in enumerate(system)]
    parts = []
    for model, rows in system_groups(rows_of):
        rows = rows.tolist()
        u = np.full((len(rows), model.steps), np.nan)
        parsed = np.zeros(len(rows), dtype=bool)
        for j, i in enumerate(rows):
            result = parse_controls(texts[i], model.steps)
            if result.ok:
                u[j], parsed[j] = result.values, True
        zero = None  # simulated by evaluate_controls unless every row of the group has it
        if J_zero is not None:
            given = [J_zero[i] for i in rows]
            if all(v is not None for v in given):
                zero = np.array(given, dtype=float)
        metrics = evaluate_controls(
            model,
            np.array([x0[i] for i in rows], dtype=float),
            u,
            np.array([J_opt[i] for i in rows], dtype=float),
            float(J_floor[rows[0]]),
            parsed=parsed,
            J_zero=zero,
        )
        parts.append((rows, metrics))
    metrics = _merge(len(texts), parts)
    # a parsed answer has each tag once, in order (parse_controls checks it): search only the others
    tags = np.array([ok or tags_in_order(t) for ok, t in zip(metrics.parsed.tolist(), texts, strict=True)])
    scores = BatchScores(tags.astype(bool), metrics)
    for array in (scores.tags_in_order, *vars(scores.metrics).values(), *scores.metrics.success.values()):
        if isinstance(array, np.ndarray):
            array.flags.writeable = False  # shared with later calls: nobody may change it
    return scores


def problem_params(params: Sequence[object] | None, row: int) -> dict | None:
    """A row's drawn values from the `params` column: a JSON text (the GRPO dataset's, lib/llm/grpo.py), a
    table, or nothing (a fixed system)."""
    if params is None:
        return None
    value = params[row]
    return json.loads(value) if isinstance(value, str) else value


def score_batch(
    completions: Sequence[object],
    system: Sequence[str],
    x0: Sequence[Sequence[float]],
    J_opt: Sequence[float],
    J_floor: Sequence[float],
    J_zero: Sequence[float] | None = None,
    params: Sequence[object] | None = None,
) -> BatchScores:
    """The batch's scores, computed once and shared by the reward functions of a step (module docstring):
    the cached result when every input equals a cached batch's, a fresh computation otherwise. `params`:
    each row's family values (JSON text or a table; None for fixed systems)."""
    texts = [completion_text(c) for c in completions]
    params = (
        None if params is None else [p if isinstance(p, str) or p is None else json.dumps(p) for p in params]
    )
    key = _batch_key(texts, system, x0, J_opt, J_floor, J_zero, params)
    with _batch_lock:
        for cached_key, scores in _batch_cache:
            if cached_key == key:
                return scores
    scores = _compute_batch(texts, system, x0, J_opt, J_floor, J_zero, params)
    with _batch_lock:
        _batch_cache.append((key, scores))
    return scores


def _decay(value: float, scale: float) -> float:
    """exp(-value / scale) for value >= 0; 0 for NaN or infinite values (e.g. a diverging simulation)."""
    value = float(value)
    return math.exp(-value / scale) if math.isfinite(value) else 0.0


def format_reward(prompts, completions, system, **columns) -> list[float]:
    """1.0 for exactly N finite numbers inside <CONTROLS> after a <REASONING> block; 0.25 when the four
    tags are there in order but the controls do not parse; 0 otherwise."""
    scoring = [columns.get(k) for k in ("x0", "J_opt", "J_floor")]
    if all(c is not None for c in scoring):  # TRL passes them: share the batch with the other rewards
        scores = score_batch(completions, system, *scoring, columns.get("J_zero"), columns.get("params"))
        return [
            1.0 if ok else (0.25 if tags else 0.0)
            for ok, tags in zip(scores.metrics.parsed.tolist(), scores.tags_in_order.tolist(), strict=True)
        ]
    rewards = []
    params = columns.get("params")
    for i, (completion, name) in enumerate(zip(completions, system, strict=True)):
        text = completion_text(completion)
        ok = parse_controls(
            text, record_system({"system": name, "params": problem_params(params, i)}).steps
        ).ok
        rewards.append(1.0 if ok else (0.25 if tags_in_order(text) else 0.0))
    return rewards


def feasibility_reward(
    prompts, completions, system, x0, J_opt, J_floor, J_zero=None, **columns
) -> list[float]:
    """exp(-max bound violation / 0.1) for parsed answers (1.0 when within bounds), 0 when unparsed."""
    m = score_batch(completions, system, x0, J_opt, J_floor, J_zero, columns.get("params")).metrics
    return [
        _decay(v, VIOLATION_SCALE) if ok else 0.0
        for v, ok in zip(m.violation.tolist(), m.parsed.tolist(), strict=True)
    ]


def optimality_reward(
    prompts, completions, system, x0, J_opt, J_floor, J_zero=None, optimality_sigma: float = 0.1, **columns
) -> list[float]:
    """exp(-max(gap, 0) / optimality_sigma) for feasible answers, 0 otherwise (an answer that leaves the
    bounds could beat J*, so it earns nothing here)."""
    m = score_batch(completions, system, x0, J_opt, J_floor, J_zero, columns.get("params")).metrics
    return [
        _decay(max(g, 0.0), optimality_sigma) if ok else 0.0
        for g, ok in zip(m.gap.tolist(), m.feasible.tolist(), strict=True)
    ]


def terminal_reward(
    prompts, completions, system, x0, J_opt, J_floor, J_zero=None, terminal_scale: float = 0.1, **columns
) -> list[float]:
    """exp(-||x_N - x_target|| / terminal_scale) for parsed answers, 0 when unparsed."""
    m = score_batch(completions, system, x0, J_opt, J_floor, J_zero, columns.get("params")).metrics
    return [
        _decay(e, terminal_scale) if ok else 0.0
        for e, ok in zip(m.terminal_error.tolist(), m.parsed.tolist(), strict=True)
    ]


def log_gap_reward(
    prompts, completions, system, x0, J_opt, J_floor, J_zero=None, log_gap_decades: float = 4.0, **columns
) -> list[float]:
    """A gate and a rank: 0 for an answer that does not parse or leaves the bounds; for a feasible one,
    0.5 + 0.5 * clip(1 - log10(max(gap, GAP_FLOOR) / GAP_FLOOR) / log_gap_decades, 0, 1).

    Every feasible answer earns more than every failure, and each decade of gap costs the same reward: with
    4 decades, gaps 0.1%, 1%, 10%, 100% and >= 1000% earn 1, 0.875, 0.75, 0.625 and 0.5. exp(-gap / 0.1)
    tells 1% from 2% (0.905 vs 0.819) but not 100% from 200% (4.5e-5 vs 2.1e-9): a group whose answers
    are all far from the optimum gets no spread from it, while this reward ranks them as the evaluation's
    log-ratio does (gaps under GAP_FLOOR equal)."""
    m = score_batch(completions, system, x0, J_opt, J_floor, J_zero, columns.get("params")).metrics
    rewards = []
    for g, ok in zip(m.gap.tolist(), m.feasible.tolist(), strict=True):
        if not ok or not math.isfinite(g):
            rewards.append(0.0)
            continue
        decades = math.log10(max(g, GAP_FLOOR) / GAP_FLOOR)
        rewards.append(0.5 + 0.5 * min(max(1.0 - decades / log_gap_decades, 0.0), 1.0))
    return rewards


REWARDS = {
    "format": format_reward,
    "feasibility": feasibility_reward,
    "optimality": optimality_reward,
    "terminal": terminal_reward,
    "log_gap": log_gap_reward,
}


def reward_functions(grpo: dict) -> tuple[list, list[float]]:
    """The reward functions with non-zero weight in `grpo.rewards`, scales bound, and their weights.

    Each keeps its own __name__, which TRL uses to log `rewards/<name>/mean`.
    """
    scales = {
        "optimality_sigma": grpo["optimality_sigma"],
        "terminal_scale": grpo["terminal_scale"],
        "log_gap_decades": grpo["log_gap_decades"],
    }
    functions, weights = [], []
    for name, weight in grpo["rewards"].items():
        if weight == 0:
            continue
        function = REWARDS[name]
        accepted = {k: v for k, v in scales.items() if k in inspect.signature(function).parameters}
        functions.append(functools.update_wrapper(functools.partial(function, **accepted), function))
        weights.append(float(weight))
    return functions, weights
