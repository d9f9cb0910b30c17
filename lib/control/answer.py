"""The prompt a model sees and the answer it must write (docs/ARCHITECTURE.md, "Prompt and answer").

Answer contract (what verify_grpo_format.py checks):
    <REASONING> ... </REASONING><CONTROLS> u_0, u_1, ..., u_{N-1} </CONTROLS>
with exactly N comma-separated finite numbers. Only whitespace may stand before <REASONING>, between the two
blocks and after </CONTROLS>. Labels print the controls with `decimals` decimals (the same knob rounds the
initial state shown in the prompt), and their reasoning states facts computed for the instance: the
uncontrolled outcome, where the controls saturate, how they start and change sign, the final state they
reach and their cost next to J*. Nothing in it is fixed boilerplate.

Two prompt styles (PROMPT_STYLES) state the same problem: "full" explains the system in words (the default,
~470 tokens for the double integrator), "compact" puts dynamics, bounds and cost in one system message of
symbols and the user message is only the initial state (~170 tokens); both state everything needed to solve
it (tests/control/test_answer.py rebuilds the problem from the compact text). Three reasoning styles
(REASONING_STYLES) fill <REASONING>: "full" (the facts above), "brief" (where the controls saturate and how
they start) and "none" (an empty block, so the contract and its parser stay the same). The controls are the
same in all of them.

`parse_controls` is strict and total: for any input it returns ParsedControls and never raises, never pads,
never truncates. It and `format_checks` are bounded: an answer longer than MAX_ANSWER_CHARS fails at once, so
a runaway completion (5 million commas) costs microseconds, not seconds, in a reward or an evaluation.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass

import numpy as np

from lib.control.systems import FEASIBILITY_TOL, System, simulate, trajectory_cost

SYSTEM_PROMPT = (
    "You are an expert in optimal control. You solve finite-horizon, discrete-time optimal control problems: "
    "given the dynamics, the control bounds, the cost and the initial state, you find the control sequence "
    "that minimises the cost. Reply with <REASONING>your reasoning</REASONING> followed by "
    "<CONTROLS>u_0, u_1, ..., u_{N-1}</CONTROLS> (exactly N comma-separated numbers) and nothing else."
)
TAGS = ("<REASONING>", "</REASONING>", "<CONTROLS>", "</CONTROLS>")
PROMPT_STYLES = ("full", "compact")
REASONING_STYLES = ("full", "brief", "none")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")  # ASCII digits only
_NON_FINITE_WORDS = {"inf", "infinity", "nan"}
# The longest answer a label holds is 830 characters (full reasoning, 50 controls, 2 decimals; 6 decimals add
# 200), and generation stops at eval.max_new_tokens / grpo.max_completion_length (512 tokens, about 2,500
# characters, by default): 20,000 characters is 24x the longest label, a length no real answer reaches.
MAX_ANSWER_CHARS = 20_000


def too_long(text: str) -> bool:
    """More than MAX_ANSWER_CHARS characters: scored as a failure without being read."""
    return len(text) > MAX_ANSWER_CHARS


def _num(value: float, spec: str) -> str:
    """format(value, spec) without a minus sign on zero ("-0.00" -> "0.00")."""
    text = format(value, spec)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _vector(values, spec: str) -> str:
    return "(" + ", ".join(_num(float(v), spec) for v in values) + ")"


def _matrix(M: np.ndarray) -> str:
    """diag(a, b) for a square diagonal matrix, else [a, b; c, d] row by row (6 significant digits)."""
    square = M.shape[0] == M.shape[1]
    if square and np.count_nonzero(M - np.diag(np.diag(M))) == 0:
        return "diag(" + ", ".join(f"{v:g}" for v in np.diag(M)) + ")"
    return "[" + "; ".join(", ".join(f"{v:g}" for v in row) for row in M) + "]"


@functools.lru_cache(maxsize=256)  # per system; a family has one per record
def _user_template(system: System, decimals: int) -> str:
    N, last = system.steps, system.steps - 1
    states = ", ".join(
        f"{name} [{unit}]" for name, unit in zip(system.state_names, system.state_units, strict=True)
    )
    return (
        f"Control problem: {system.title}.\n"
        f"{system.description}\n"
        f"State x = ({states}); control u = {system.control_name} [{system.control_unit}].\n"
        f"Time step dt = {system.dt:g} s, horizon N = {N} steps ({N * system.dt:g} s): choose u_0, ..., u_{last}.\n"
        f"Control bounds: {system.u_min:g} <= u_k <= {system.u_max:g}.\n"
        f"Target: x* = {_vector(system.x_target, '.6g')}.\n"
        f"Cost: J = sum_{{k=0}}^{{{last}}} [ (x_k - x*)' Q (x_k - x*) + R u_k^2 ] + (x_{N} - x*)' Qf (x_{N} - x*), "
        f"with Q = {_matrix(system.Q)}, R = {system.R:g}, Qf = {_matrix(system.Qf)}.\n"
        "Initial state: x_0 = {x0}.\n"
        f"Find the controls that minimise J. Answer with <REASONING>...</REASONING> followed by "
        f"<CONTROLS>u_0, ..., u_{last}</CONTROLS>: exactly {N} comma-separated numbers with {decimals} decimals."
    )


@functools.lru_cache(maxsize=256)
def compact_statement(system: System) -> str:
    """The compact style's system message: the whole problem in symbols, one line (x+ is x_{k+1}). It leaves
    the answer format out: a fine-tuned model learns it from the labels (the full style spells it out)."""
    N = system.steps
    if system.is_linear:
        dynamics = f"x+ = A x + B u, A = {_matrix(system.A)}, B = {_matrix(system.B)}"
    else:
        dynamics = f"{system.ode}, RK4 step dt = {system.dt:g}"
    return (
        f"{system.name}: x = ({', '.join(system.state_names)}), {dynamics}; N = {N}; "
        f"{system.u_min:g} <= u <= {system.u_max:g}; min sum_(k<{N}) e_k'Q e_k + R u_k^2 + e_{N}'Qf e_{N}, "
        f"e = x - x*, x* = {_vector(system.x_target, '.6g')}, Q = {_matrix(system.Q)}, R = {system.R:g}, "
        f"Qf = {_matrix(system.Qf)}."
    )


def build_prompt(system: System, x0: np.ndarray, decimals: int = 2, style: str = "full") -> list[dict]:
    """[system message, user message] in TRL's conversational format; x0 is shown with `decimals` decimals.

    style "full" explains the problem in words; "compact" states it in symbols (module docstring).
    """
    shown = _vector(x0, f".{decimals}f")
    if style == "compact":
        return [
            {"role": "system", "content": compact_statement(system)},
            {"role": "user", "content": f"x_0 = {shown}"},
        ]
    if style != "full":
        raise ValueError(f"unknown prompt style {style!r}: expected one of {PROMPT_STYLES}")
    user = _user_template(system, decimals).replace("{x0}", shown)
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


_BOUND = r"[+-]?(?:inf|[0-9]+(?:\.[0-9]*)?(?:e[+-]?[0-9]+)?)"  # how `:g` prints a bound
_STATED_BOUNDS = re.compile(rf"({_BOUND}) <= u(?:_k)? <= ({_BOUND})")


def stated_bounds(prompt: list[dict]) -> tuple[float, float] | None:
    """The control bounds (u_min, u_max) a prompt of `build_prompt` states, in either style; None for a prompt
    that states none (not one of ours). What the model was told, so what a decoder may clip its numbers to:
    it holds for a dataset's prompts, an MPC re-plan's and fresh problems' alike."""
    for message in prompt:
        found = _STATED_BOUNDS.search(message.get("content", ""))
        if found:
            return float(found.group(1)), float(found.group(2))
    return None


def format_controls(u: np.ndarray, decimals: int = 2) -> str:
    """The controls as "u_0, u_1, ..." with `decimals` decimals (never "-0.00")."""
    spec = f".{decimals}f"
    return ", ".join(_num(v, spec) for v in np.asarray(u, dtype=float).tolist())


def _ranges(steps: np.ndarray) -> str:
    """[0 1 2 5 7 8] -> "0-2, 5, 7-8"."""
    parts, start = [], None
    for i, k in enumerate(steps):
        if start is None:
            start = k
        if i + 1 == len(steps) or steps[i + 1] != k + 1:
            parts.append(f"{start}" if start == k else f"{start}-{k}")
            start = None
    return ", ".join(parts)


def _steps(steps: np.ndarray) -> str:
    return f"step {steps[0]}" if len(steps) == 1 else f"steps {_ranges(steps)}"


def _saturation_text(system: System, u: np.ndarray, decimals: int) -> str:
    spec = f".{decimals}f"
    upper, lower = np.flatnonzero(u >= system.u_max), np.flatnonzero(u <= system.u_min)
    pieces = []
    if upper.size:
        pieces.append(f"on the upper bound {_num(system.u_max, spec)} at {_steps(upper)}")
    if lower.size:
        pieces.append(f"on the lower bound {_num(system.u_min, spec)} at {_steps(lower)}")
    if not pieces:
        return "No control reaches a bound."
    inside = system.steps - upper.size - lower.size
    rest = f"; the other {inside} are strictly inside the bounds." if inside else "; every step saturates."
    return "The controls sit " + " and ".join(pieces) + rest


def _sign_text(u: np.ndarray, decimals: int) -> str:
    signs = np.sign(u[u != 0])
    changes = int(np.count_nonzero(signs[1:] != signs[:-1]))
    start = f"They start at u_0 = {_num(u[0], f'.{decimals}f')}"
    if signs.size == 0:
        return start + " and stay at zero."
    if changes == 0:
        return start + " and never change sign."
    return start + (" and change sign once." if changes == 1 else f" and change sign {changes} times.")


def format_answers(
    system: System,
    x0: np.ndarray,
    u_label: np.ndarray,
    J_opt: np.ndarray,
    decimals: int = 2,
    reasoning: str = "full",
) -> list[str]:
    """Label completions for a batch: x0 [B, n], u_label [B, N] (values on the printed grid), J_opt [B].

    Every number in the reasoning is computed here from the instance; `reasoning` picks how much of it
    (module docstring).
    """
    if reasoning not in REASONING_STYLES:
        raise ValueError(f"unknown reasoning style {reasoning!r}: expected one of {REASONING_STYLES}")
    if reasoning != "full":
        return [
            f"<REASONING>{_brief_reasoning(system, u, decimals) if reasoning == 'brief' else ''}</REASONING>"
            f"<CONTROLS>{format_controls(u, decimals)}</CONTROLS>"
            for u in np.asarray(u_label, dtype=float)
        ]
    x0 = np.asarray(x0, dtype=float).reshape(-1, system.n)
    u_label = np.asarray(u_label, dtype=float)
    N = system.steps
    zeros = np.zeros_like(u_label)
    free_states = simulate(system, x0, zeros)
    J_zero = trajectory_cost(system, free_states, zeros)
    states = simulate(system, x0, u_label)
    J_label = trajectory_cost(system, states, u_label)
    target = _vector(system.x_target, ".3f")
    answers = []
    for i in range(len(x0)):
        u = u_label[i]
        reasoning = (
            f"Without control (u = 0) the state would go from x_0 = {_vector(x0[i], f'.{decimals}f')} to "
            f"x_{N} = {_vector(free_states[i, -1], '.3f')} at cost J0 = {J_zero[i]:.4g}. "
            f"{_saturation_text(system, u, decimals)} {_sign_text(u, decimals)} "
            f"Applied from x_0 they bring the state to x_{N} = {_vector(states[i, -1], '.3f')} (target {target}) "
            f"at cost J = {J_label[i]:.4g}; the exact optimum is J* = {J_opt[i]:.4g}."
        )
        answers.append(
            f"<REASONING>{reasoning}</REASONING><CONTROLS>{format_controls(u, decimals)}</CONTROLS>"
        )
    return answers


def _brief_reasoning(system: System, u: np.ndarray, decimals: int) -> str:
    return f"{_saturation_text(system, u, decimals)} {_sign_text(u, decimals)}"


def format_answer(
    system: System,
    x0: np.ndarray,
    u_label: np.ndarray,
    J_opt: float,
    decimals: int = 2,
    reasoning: str = "full",
) -> str:
    """The label completion for one instance (see format_answers)."""
    return format_answers(
        system, np.asarray(x0)[None], np.asarray(u_label)[None], np.array([J_opt]), decimals, reasoning
    )[0]


@dataclass(frozen=True)
class ParsedControls:
    ok: bool
    values: np.ndarray | None  # [expected_count] floats when ok, else None
    reason: str  # "" when ok, otherwise what is wrong


def _fail(reason: str) -> ParsedControls:
    return ParsedControls(False, None, reason)


def parse_controls(text: str, expected_count: int) -> ParsedControls:
    """The N controls of an answer, or the reason it breaks the contract (module docstring). Never raises."""
    if not isinstance(text, str):
        return _fail(f"not a string: got {type(text).__name__}")
    if too_long(text):
        return _fail(f"too long: {len(text)} characters, more than any answer ({MAX_ANSWER_CHARS})")
    positions = []
    for tag in TAGS:
        count = text.count(tag)
        if count != 1:
            return _fail(
                f"missing tag {tag}" if count == 0 else f"tag {tag} appears {count} times, expected once"
            )
        positions.append(text.index(tag))
    if positions != sorted(positions):
        return _fail("tags out of order: expected <REASONING>...</REASONING> then <CONTROLS>...</CONTROLS>")
    r_open, r_close, c_open, c_close = positions
    outside = (text[:r_open], text[r_close + len(TAGS[1]) : c_open], text[c_close + len(TAGS[3]) :])
    if any(part.strip() for part in outside):
        return _fail("text outside the <REASONING> and <CONTROLS> blocks")
    body = text[c_open + len(TAGS[2]) : c_close]
    if not body.strip():
        return _fail(f"empty <CONTROLS> block: got 0 numbers, expected {expected_count}")
    tokens = [token.strip() for token in body.split(",")]
    if len(tokens) != expected_count:
        return _fail(f"wrong count: got {len(tokens)} comma-separated entries, expected {expected_count}")
    values = np.empty(len(tokens))
    for k, token in enumerate(tokens):
        if _NUMBER.fullmatch(token):
            values[k] = float(token)
            if not math.isfinite(values[k]):
                return _fail(f"non-finite value at u_{k}: '{token}'")
        elif token.lstrip("+-").lower() in _NON_FINITE_WORDS:
            return _fail(f"non-finite value at u_{k}: '{token}'")
        else:
            shown = token if len(token) <= 20 else token[:20] + "..."
            return _fail(f"not a number at u_{k}: '{shown}'")
    return ParsedControls(True, values, "")


FORMAT_CHECKS = (
    "reasoning_tags",
    "control_tags",
    "proper_order",
    "parses_as_numbers",
    "exact_control_count",
    "controls_within_bounds",
)


def format_checks(text: str, system: System) -> dict[str, bool]:
    """The answer contract check by check (what verify_grpo_format.py reports); never raises.

    reasoning_tags / control_tags: each pair present once, opening before closing; proper_order: the
    reasoning block before the controls block; parses_as_numbers: every comma-separated entry in <CONTROLS>
    is a finite number; exact_control_count: exactly N of them; controls_within_bounds: all within the
    system's bounds (to 1e-6, as lib.control.metrics). A check that cannot be judged (no controls block) is False;
    an answer longer than MAX_ANSWER_CHARS fails every check.
    """

    result = dict.fromkeys(FORMAT_CHECKS, False)
    if not isinstance(text, str) or too_long(text):
        return result

    def pair(open_tag: str, close_tag: str) -> bool:
        return (
            text.count(open_tag) == 1
            and text.count(close_tag) == 1
            and text.index(open_tag) < text.index(close_tag)
        )

    result["reasoning_tags"] = pair(TAGS[0], TAGS[1])
    result["control_tags"] = pair(TAGS[2], TAGS[3])
    result["proper_order"] = (
        result["reasoning_tags"] and result["control_tags"] and text.index(TAGS[1]) < text.index(TAGS[2])
    )
    if not result["control_tags"]:
        return result
    body = text[text.index(TAGS[2]) + len(TAGS[2]) : text.index(TAGS[3])]
    tokens = [token.strip() for token in body.split(",")]
    values = [float(token) for token in tokens if _NUMBER.fullmatch(token)]
    result["parses_as_numbers"] = len(values) == len(tokens) and all(math.isfinite(v) for v in values)
    result["exact_control_count"] = result["parses_as_numbers"] and len(values) == system.steps
    result["controls_within_bounds"] = result["exact_control_count"] and all(
        system.u_min - FEASIBILITY_TOL <= v <= system.u_max + FEASIBILITY_TOL for v in values
    )
    return result
