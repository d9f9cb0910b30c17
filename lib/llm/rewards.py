"""GRPO reward functions: plain functions of (prompts, completions, **columns) -> list[float].

TRL's GRPOTrainer calls each function with the batch's completions and every other dataset column as a
keyword argument, one entry per completion (a prompt's columns repeat for each of its generations), so
each completion is scored against its own instance: `system`, `x0`, `J_opt`, `J_floor`.
Every reward is bounded in [0, 1] and finite for any text (tests fuzz them); the score itself comes from
lib/control/metrics.py, i.e. the same simulator, parser and gap as evaluation.

A config lists rewards by name with weights (`grpo.rewards`); REWARDS maps those names to functions, and
`reward_functions` binds the shaping scales from the config (grpo.optimality_sigma, grpo.terminal_scale).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence

import numpy as np

from lib.control.answer import TAGS, parse_controls
from lib.control.metrics import ControlMetrics, evaluate_completions
from lib.control.systems import get_system

VIOLATION_SCALE = 0.1  # a control 0.1 beyond its bound earns 1/e of the feasibility reward


def completion_text(completion: object) -> str:
    """The assistant text of a completion: a plain string, or TRL's conversational [{"role", "content"}]."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and isinstance(completion[-1], dict):
        content = completion[-1].get("content", "")
        return content if isinstance(content, str) else ""
    return ""


def score_completions(
    completions: Sequence[object],
    system: Sequence[str],
    x0: Sequence[Sequence[float]],
    J_opt: Sequence[float],
    J_floor: Sequence[float],
) -> list[tuple[ControlMetrics, int]]:
    """(metrics of the completion's system group, index in that group) for each completion."""
    texts = [completion_text(c) for c in completions]
    out: list[tuple[ControlMetrics, int] | None] = [None] * len(texts)
    for name in dict.fromkeys(system):  # each system in first-seen order, vectorised inside
        rows = [i for i, s in enumerate(system) if s == name]
        metrics = evaluate_completions(
            get_system(name),
            np.array([x0[i] for i in rows], dtype=float),
            [texts[i] for i in rows],
            np.array([J_opt[i] for i in rows], dtype=float),
            float(J_floor[rows[0]]),
        )
        for j, i in enumerate(rows):
            out[i] = (metrics, j)
    return out  # type: ignore[return-value]


def _decay(value: float, scale: float) -> float:
    """exp(-value / scale) for value >= 0; 0 for NaN or infinite values (e.g. a diverging simulation)."""
    value = float(value)
    return math.exp(-value / scale) if math.isfinite(value) else 0.0


def format_reward(prompts, completions, system, **columns) -> list[float]:
    """1.0 for exactly N finite numbers inside <CONTROLS> after a <REASONING> block; 0.25 when the four
    tags are there in order but the controls do not parse; 0 otherwise."""
    rewards = []
    for completion, name in zip(completions, system, strict=True):
        text = completion_text(completion)
        if parse_controls(text, get_system(name).steps).ok:
            rewards.append(1.0)
            continue
        positions = [text.find(tag) for tag in TAGS]
        in_order = all(p >= 0 for p in positions) and positions == sorted(positions)
        rewards.append(0.25 if in_order else 0.0)
    return rewards


def feasibility_reward(prompts, completions, system, x0, J_opt, J_floor, **columns) -> list[float]:
    """exp(-max bound violation / 0.1) for parsed answers (1.0 when within bounds), 0 when unparsed."""
    scores = score_completions(completions, system, x0, J_opt, J_floor)
    return [_decay(m.violation[j], VIOLATION_SCALE) if m.parsed[j] else 0.0 for m, j in scores]


def optimality_reward(
    prompts, completions, system, x0, J_opt, J_floor, optimality_sigma: float = 0.1, **columns
) -> list[float]:
    """exp(-max(gap, 0) / optimality_sigma) for feasible answers, 0 otherwise (an answer that leaves the
    bounds could beat J*, so it earns nothing here)."""
    scores = score_completions(completions, system, x0, J_opt, J_floor)
    return [_decay(max(m.gap[j], 0.0), optimality_sigma) if m.feasible[j] else 0.0 for m, j in scores]


def terminal_reward(
    prompts, completions, system, x0, J_opt, J_floor, terminal_scale: float = 0.1, **columns
) -> list[float]:
    """exp(-||x_N - x_target|| / terminal_scale) for parsed answers, 0 when unparsed."""
    scores = score_completions(completions, system, x0, J_opt, J_floor)
    return [_decay(m.terminal_error[j], terminal_scale) if m.parsed[j] else 0.0 for m, j in scores]


REWARDS = {
    "format": format_reward,
    "feasibility": feasibility_reward,
    "optimality": optimality_reward,
    "terminal": terminal_reward,
}


def reward_functions(grpo: dict) -> tuple[list, list[float]]:
    """The reward functions with non-zero weight in `grpo.rewards`, scales bound, and their weights.

    Each keeps its own __name__, which TRL uses to log `rewards/<name>/mean`.
    """
    scales = {"optimality_sigma": grpo["optimality_sigma"], "terminal_scale": grpo["terminal_scale"]}
    functions, weights = [], []
    for name, weight in grpo["rewards"].items():
        if weight == 0:
            continue
        function = REWARDS[name]
        accepted = {k: v for k, v in scales.items() if k in inspect.signature(function).parameters}
        functions.append(functools.update_wrapper(functools.partial(function, **accepted), function))
        weights.append(float(weight))
    return functions, weights
